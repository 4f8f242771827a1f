//! The seccomp allowlist for job processes, kept as data.
//!
//! This file holds constants only; `seccomp/mod.rs` turns them into filters. A job process gets:
//! every syscall in [`ALLOWED`] allowed (`ioctl` and `clone` further narrowed by argument filters
//! stacked on top, see below), every syscall in [`ENOSYS`] answered with `ENOSYS`, and everything
//! else answered with `EPERM`. [`NEVER`] is not used to build the filter: it is the list of calls
//! a unit test keeps out of [`ALLOWED`], so that widening the allowlist by mistake fails a test.
//!
//! # Why an allowlist, and why `EPERM`
//!
//! Seccomp is one layer among several. The user, mount, pid, net and ipc namespaces, the empty
//! capability sets, Landlock, rlimits and cgroups do most of the confining; the filter shrinks the
//! kernel surface a job can reach, and refuses the calls where a namespace is no boundary
//! (keyrings, io_uring, bpf, perf) or where a job could rebuild its own confinement (`mount`,
//! `unshare`, `setns`). A denylist ages badly: every kernel release adds syscalls (the new mount
//! API, io_uring, `open_tree_attr`, the `lsm_*` calls), and a denylist lets each through until
//! someone notices. With an allowlist a new syscall is refused until someone reads what it does
//! and adds it here with a reason.
//!
//! The default action is `EPERM`, not `SECCOMP_RET_KILL_PROCESS`: tools probe for features and
//! fall back when a call fails (libuv falls back from io_uring to its thread pool, glibc from
//! `clone3` to `clone`), and a refused call shows up as an error message naming the operation
//! instead of a bare `SIGSYS`. Answering everything with `ENOSYS` was rejected too: it tells tools
//! the kernel is old, which sends them down legacy paths that are refused as well.
//!
//! # How the list was derived
//!
//! `bench/derive-seccomp.sh` runs six real workloads under `strace -f` (gcc + make, Python,
//! Node, git, cargo/rustc, shell and coreutils) and writes the syscall names each used to
//! `derived/<workload>.txt`; `derived/README.md` records the commands, date, kernel and tool
//! versions. [`ALLOWED`] is the union of those lists (134 names, of which only `clone3` is not
//! allowed but answered `ENOSYS`) plus the ordinary calls a general build may need that the
//! workloads happened not to make: the `*at` variants of calls they did make, vectored and
//! positional io, event-loop calls, timers, SysV and POSIX IPC, NUMA policy, file watchers,
//! and the clock calls (legacy AIO, which no workload made, answers `ENOSYS`: see below). strace cannot see the clock calls at all: `clock_gettime`,
//! `gettimeofday`, `time` and `getcpu` normally run in the vDSO, which falls back to the real
//! syscall only when the clocksource has no vDSO support (common on VMs).
//!
//! Each `why` starting `derived: <workloads>;` names the workloads that used the call (`all` =
//! all six); a unit test checks those attributions against the lists, and another fails when a
//! list names a syscall this file does not classify, so regenerating the lists with newer tools
//! forces a decision here. The lists were made as root outside any sandbox, so they
//! over-approximate in places (tar and `cp -a` restore ownership with `fchownat` only as root)
//! and cannot show fallback paths (whatever a tool does after a refused call).
//!
//! # Calls with special handling
//!
//! - `clone` is allowed here, but a stacked argument filter refuses the namespace flags
//!   (`CLONE_NEWUSER`, `CLONE_NEWNS`, ...): a job that could make a new user namespace would hold
//!   a full capability set inside it.
//! - `clone3` is in [`ENOSYS`], not [`ALLOWED`]: its flags live in memory, which a BPF filter
//!   cannot read, so it cannot get the flag check `clone` gets. glibc 2.34+ tries `clone3` first
//!   for threads and `posix_spawn` and falls back to `clone` only on `ENOSYS` (not `EPERM`). Five
//!   of the six workloads called it, each through glibc, whose fallback covers them.
//! - Legacy AIO (`io_setup` and the rest of the `io_*` calls) answers ENOSYS, as on a kernel
//!   built without it: every AIO context counts against `fs.aio-max-nr`, one count for the
//!   whole host (65536 by default, not per namespace, cgroup or uid), so one
//!   `io_setup(65536, ...)` in a job left every other job and the host's own libaio users
//!   with EAGAIN until the job ended. libaio users fall back on ENOSYS (InnoDB to its
//!   simulated AIO, with a warning; QEMU's `aio=native` does not, and needs `aio=threads`).
//! - `ioctl` is allowed here, but a stacked argument filter refuses `TIOCSTI` and `TIOCLINUX`
//!   (terminal input injection), comparing the request as 32 bits (CVE-2019-10063).
//!
//! # What is deliberately refused, and what that breaks
//!
//! None of the 134 syscalls the workloads used is in [`NEVER`]. The decisions worth knowing:
//!
//! - `ptrace`, `process_vm_readv`/`process_vm_writev`, `kcmp`, `pidfd_getfd`: every process in the
//!   job runs as the same uid, so these would let any job process read, write or steal descriptors
//!   from any other one, including the sandbox's init; on old kernels `ptrace` could also rewrite
//!   a syscall after seccomp had checked it. This breaks gdb, strace and rr inside jobs, and one
//!   surprise: AddressSanitizer's leak checker stops the process's threads with `ptrace` at exit,
//!   so with `ptrace` refused every ASan binary exits 1 with "LeakSanitizer has encountered a fatal
//!   error", leaks or not (checked on the derivation host with a filter refusing only `ptrace`).
//!   Jobs that use ASan must set `ASAN_OPTIONS=detect_leaks=0`.
//! - io_uring: its operations do not pass through syscall entry, so seccomp cannot see them, and
//!   it has a long record of privilege escalations. Node 20's libuv uses it only when
//!   `UV_USE_IO_URING=1` and then falls back to its thread pool on `EPERM` (checked with strace
//!   fault injection).
//! - `mbind`, `set_mempolicy`, `get_mempolicy` are allowed (NUMA policy of the caller's own pages;
//!   `ps` calls them through libnuma), but `migrate_pages` and `move_pages` are refused: they act
//!   on another process's pages.
//! - `personality` is allowed: `setarch -R`, `linux32` and some emulators and toolchains need it,
//!   and it only weakens the caller's own execution domain (e.g. disabling ASLR for itself). The
//!   argument filter could narrow it to the values Docker allows if that ever matters.
//! - `mknod`/`mknodat` are allowed for FIFOs (`mkfifo`). Device nodes are refused by the kernel
//!   (they need `CAP_MKNOD` in the initial user namespace) and the job's mounts are `nodev`.
//! - The chown, setuid and capset families are allowed: without capabilities they can only keep or
//!   drop ids and capabilities, and many tools call them (make's children call `seteuid` with
//!   their real uid before running each recipe).
//! - `sync` is refused: it writes back every filesystem on the host, so a job looping on it
//!   degrades the machine. glibc's `sync()` returns nothing, so `sync(1)` still exits 0; `fsync`,
//!   `fdatasync` and `syncfs` stay allowed.
//! - `get_robust_list` is refused: only debuggers use it, and it has leaked other processes'
//!   address-space layout. `modify_ldt` (16-bit segments for Wine and DOSEMU) and `iopl`/`ioperm`
//!   are refused for their record.
//! - Newer than the x86_64 table of libc 0.2.191, so they cannot be named with `libc::SYS_*` and
//!   fall to the default `EPERM`: `open_tree_attr` and `lsm_set_self_attr` (both belong in
//!   [`NEVER`] once libc defines them), `lsm_get_self_attr`, `lsm_list_modules`, `listmount`,
//!   `statmount`, the `*xattrat` calls, `cachestat`, `map_shadow_stack` and `uretprobe`.
//!   `map_shadow_stack` only maps the caller's own memory; glibc 2.39+ built with CET shadow
//!   stacks calls it, so add it when job images carry such a glibc.
//! - Left to the default without being listed anywhere: `vmsplice`, `remap_file_pages`,
//!   `memfd_secret`, `process_mrelease`, `set_thread_area`/`get_thread_area`, and the never
//!   implemented `getpmsg`, `putpmsg`, `afs_syscall`, `tuxcall`, `security`, `vserver`.
//!
//! Calls that exist only on x86_64 (`open`, `stat`, `fork`, `arch_prctl`, ...) are gated with
//! `#[cfg(target_arch = "x86_64")]`, as is `fchmodat2`, which the kernel has everywhere but libc
//! 0.2 defines only on x86_64. `renameat` (absent from the riscv64 kernel), `mseal` and
//! `kexec_file_load` (absent from libc's riscv64 table) are gated off riscv64. The gating was
//! checked against libc 0.2.191's aarch64 and riscv64 tables but only x86_64 was compiled; the
//! lists were derived on x86_64 only.
//!
//! # Tests
//!
//! The unit tests below check that numbers and names are unique, that [`ALLOWED`], [`ENOSYS`]
//! and [`NEVER`] are disjoint, that every name in `derived/*.txt` is classified, that every
//! `derived:` attribution matches the lists, that a derived call in [`NEVER`] or [`ENOSYS`] is
//! named in these docs, and that every entry's name is the name of the `libc::SYS_*` constant it
//! uses. The list-based tests run on x86_64 only, where the lists were made. Whether the filter
//! built from these lists refuses what it should is tested where it is built and installed.

/// One allowed syscall: its number on this architecture and why it is there.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Allowed {
    /// The syscall number (`libc::SYS_*`).
    pub nr: i64,
    /// The syscall's name, as strace prints it.
    pub name: &'static str,
    /// Why a job may call it; `derived: <workloads>;` first when a measured workload did.
    #[allow(dead_code, reason = "for reviewers and tests; the filter needs nr")]
    pub why: &'static str,
}

/// Every syscall a job process may make.
#[rustfmt::skip] // a table: one entry per line reads better than rustfmt's five
pub(crate) const ALLOWED: &[Allowed] = &[
    // Processes and threads. `clone` and `clone3` are special: see the module docs.
    Allowed { nr: libc::SYS_execve, name: "execve", why: "derived: all; run programs" },
    Allowed { nr: libc::SYS_execveat, name: "execveat", why: "run programs by fd (fexecve)" },
    Allowed { nr: libc::SYS_clone, name: "clone", why: "derived: all; threads, fork; arguments filtered elsewhere: namespace flags refused" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_fork, name: "fork", why: "fork(2)" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_vfork, name: "vfork", why: "derived: gcc-make,python,git,cargo,shell; posix_spawn, make, bash" },
    Allowed { nr: libc::SYS_exit, name: "exit", why: "derived: python,node,git,cargo; thread exit" },
    Allowed { nr: libc::SYS_exit_group, name: "exit_group", why: "derived: all; process exit" },
    Allowed { nr: libc::SYS_wait4, name: "wait4", why: "derived: all; reap children" },
    Allowed { nr: libc::SYS_waitid, name: "waitid", why: "reap children" },
    Allowed { nr: libc::SYS_kill, name: "kill", why: "derived: python,shell; signals; reach only the job's own pid namespace" },
    Allowed { nr: libc::SYS_tkill, name: "tkill", why: "signal one thread" },
    Allowed { nr: libc::SYS_tgkill, name: "tgkill", why: "derived: cargo; signal one thread (raise, abort)" },
    Allowed { nr: libc::SYS_rt_sigqueueinfo, name: "rt_sigqueueinfo", why: "sigqueue(3); same permission check as kill" },
    Allowed { nr: libc::SYS_rt_tgsigqueueinfo, name: "rt_tgsigqueueinfo", why: "pthread_sigqueue(3); same permission check as kill" },
    Allowed { nr: libc::SYS_pidfd_open, name: "pidfd_open", why: "race-free child handling (systemd-style, Python 3.9+)" },
    Allowed { nr: libc::SYS_pidfd_send_signal, name: "pidfd_send_signal", why: "race-free kill through a pidfd" },
    Allowed { nr: libc::SYS_set_tid_address, name: "set_tid_address", why: "derived: all; thread start-up (libc)" },
    Allowed { nr: libc::SYS_set_robust_list, name: "set_robust_list", why: "derived: all; thread start-up (libc)" },
    Allowed { nr: libc::SYS_rseq, name: "rseq", why: "derived: all; restartable sequences registered by glibc 2.35+" },
    Allowed { nr: libc::SYS_gettid, name: "gettid", why: "derived: python,node,cargo; thread id" },
    Allowed { nr: libc::SYS_getpid, name: "getpid", why: "derived: all; process id" },
    Allowed { nr: libc::SYS_getppid, name: "getppid", why: "derived: all; parent id" },
    Allowed { nr: libc::SYS_setpgid, name: "setpgid", why: "derived: shell; shell job control" },
    Allowed { nr: libc::SYS_getpgid, name: "getpgid", why: "shell job control" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_getpgrp, name: "getpgrp", why: "derived: all; shell job control" },
    Allowed { nr: libc::SYS_setsid, name: "setsid", why: "derived: git,shell; setsid(1), daemons, timeout" },
    Allowed { nr: libc::SYS_getsid, name: "getsid", why: "session id" },
    Allowed { nr: libc::SYS_prctl, name: "prctl", why: "derived: python,cargo,shell; names, PDEATHSIG, no_new_privs; the rest needs caps" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_arch_prctl, name: "arch_prctl", why: "derived: all; TLS set-up by the dynamic loader" },
    Allowed { nr: libc::SYS_personality, name: "personality", why: "setarch -R, linux32, emulators; changes only the caller's own execution domain" },
    Allowed { nr: libc::SYS_seccomp, name: "seccomp", why: "a job may add its own filters; filters only stack and cannot loosen ours" },
    Allowed { nr: libc::SYS_landlock_create_ruleset, name: "landlock_create_ruleset", why: "a job may sandbox itself further" },
    Allowed { nr: libc::SYS_landlock_add_rule, name: "landlock_add_rule", why: "a job may sandbox itself further" },
    Allowed { nr: libc::SYS_landlock_restrict_self, name: "landlock_restrict_self", why: "a job may sandbox itself further; only restricts" },
    Allowed { nr: libc::SYS_capget, name: "capget", why: "derived: node; capability queries (libcap, node)" },
    Allowed { nr: libc::SYS_capset, name: "capset", why: "capability sets can only shrink: the bounding set is empty" },
    Allowed { nr: libc::SYS_umask, name: "umask", why: "derived: gcc-make,python,git,shell; file creation mask" },
    Allowed { nr: libc::SYS_chdir, name: "chdir", why: "derived: gcc-make,python,git,cargo,shell; working directory" },
    Allowed { nr: libc::SYS_fchdir, name: "fchdir", why: "derived: shell; working directory by fd" },
    Allowed { nr: libc::SYS_getcwd, name: "getcwd", why: "derived: gcc-make,python,node,git,cargo; working directory" },
    Allowed { nr: libc::SYS_getrandom, name: "getrandom", why: "derived: all; randomness (hash seeds, TLS, tempfile names)" },
    Allowed { nr: libc::SYS_uname, name: "uname", why: "derived: all; kernel release and machine" },
    Allowed { nr: libc::SYS_sysinfo, name: "sysinfo", why: "derived: all; memory and uptime (nproc heuristics)" },
    // Credentials. Without capabilities these can only keep or drop ids; many tools call them.
    Allowed { nr: libc::SYS_getuid, name: "getuid", why: "derived: all; credentials" },
    Allowed { nr: libc::SYS_geteuid, name: "geteuid", why: "derived: all; credentials" },
    Allowed { nr: libc::SYS_getgid, name: "getgid", why: "derived: all; credentials" },
    Allowed { nr: libc::SYS_getegid, name: "getegid", why: "derived: all; credentials" },
    Allowed { nr: libc::SYS_getresuid, name: "getresuid", why: "credentials" },
    Allowed { nr: libc::SYS_getresgid, name: "getresgid", why: "credentials" },
    Allowed { nr: libc::SYS_getgroups, name: "getgroups", why: "credentials" },
    Allowed { nr: libc::SYS_setuid, name: "setuid", why: "can only drop: no CAP_SETUID" },
    Allowed { nr: libc::SYS_setgid, name: "setgid", why: "can only drop: no CAP_SETGID" },
    Allowed { nr: libc::SYS_setreuid, name: "setreuid", why: "can only drop: no CAP_SETUID" },
    Allowed { nr: libc::SYS_setregid, name: "setregid", why: "can only drop: no CAP_SETGID" },
    Allowed { nr: libc::SYS_setresuid, name: "setresuid", why: "derived: gcc-make; can only drop: no CAP_SETUID (make: seteuid before each recipe)" },
    Allowed { nr: libc::SYS_setresgid, name: "setresgid", why: "derived: gcc-make; can only drop: no CAP_SETGID (make: setegid before each recipe)" },
    Allowed { nr: libc::SYS_setfsuid, name: "setfsuid", why: "can only drop: no CAP_SETUID" },
    Allowed { nr: libc::SYS_setfsgid, name: "setfsgid", why: "can only drop: no CAP_SETGID" },
    Allowed { nr: libc::SYS_setgroups, name: "setgroups", why: "fails without CAP_SETGID; setgroups=deny in the user namespace" },
    // Resource limits and scheduling. Without CAP_SYS_RESOURCE or CAP_SYS_NICE these can only lower
    // limits and priorities.
    Allowed { nr: libc::SYS_getrlimit, name: "getrlimit", why: "resource limits" },
    Allowed { nr: libc::SYS_setrlimit, name: "setrlimit", why: "can only lower hard limits" },
    Allowed { nr: libc::SYS_prlimit64, name: "prlimit64", why: "derived: all; its own limits only (pid 0, an argument rule in mod.rs)" },
    Allowed { nr: libc::SYS_getrusage, name: "getrusage", why: "derived: gcc-make; time(1), make -l" },
    Allowed { nr: libc::SYS_times, name: "times", why: "process times" },
    Allowed { nr: libc::SYS_getpriority, name: "getpriority", why: "nice" },
    Allowed { nr: libc::SYS_setpriority, name: "setpriority", why: "nice; can only lower priority; one process only, not a group or user (an argument rule in mod.rs)" },
    Allowed { nr: libc::SYS_ioprio_get, name: "ioprio_get", why: "ionice" },
    Allowed { nr: libc::SYS_ioprio_set, name: "ioprio_set", why: "ionice; cannot raise to realtime class; one process only (an argument rule in mod.rs)" },
    Allowed { nr: libc::SYS_sched_yield, name: "sched_yield", why: "derived: cargo; spin locks, runtimes" },
    Allowed { nr: libc::SYS_sched_getaffinity, name: "sched_getaffinity", why: "derived: python,node,cargo,shell; CPU count (nproc, runtimes)" },
    Allowed { nr: libc::SYS_sched_setaffinity, name: "sched_setaffinity", why: "taskset; only within the job's cpuset; never init (pid 1, an argument rule in mod.rs)" },
    Allowed { nr: libc::SYS_sched_getparam, name: "sched_getparam", why: "scheduling queries" },
    Allowed { nr: libc::SYS_sched_setparam, name: "sched_setparam", why: "RLIMIT_RTPRIO is 0 in the job; never init (pid 1)" },
    Allowed { nr: libc::SYS_sched_getscheduler, name: "sched_getscheduler", why: "scheduling queries" },
    Allowed { nr: libc::SYS_sched_setscheduler, name: "sched_setscheduler", why: "SCHED_BATCH/IDLE; RLIMIT_RTPRIO is 0 in the job; never init (pid 1)" },
    Allowed { nr: libc::SYS_sched_getattr, name: "sched_getattr", why: "scheduling queries" },
    Allowed { nr: libc::SYS_sched_setattr, name: "sched_setattr", why: "as sched_setscheduler; never init (pid 1)" },
    Allowed { nr: libc::SYS_sched_get_priority_max, name: "sched_get_priority_max", why: "scheduling queries" },
    Allowed { nr: libc::SYS_sched_get_priority_min, name: "sched_get_priority_min", why: "scheduling queries" },
    Allowed { nr: libc::SYS_sched_rr_get_interval, name: "sched_rr_get_interval", why: "scheduling queries" },
    Allowed { nr: libc::SYS_getcpu, name: "getcpu", why: "current CPU (usually vDSO, not seen by strace)" },
    // Signals, timers and clocks. The clock calls normally go through the vDSO, so strace never
    // sees them; the kernel falls back to the real syscall when the clocksource has no vDSO support
    // (common on VMs).
    Allowed { nr: libc::SYS_rt_sigaction, name: "rt_sigaction", why: "derived: all; signal handlers" },
    Allowed { nr: libc::SYS_rt_sigprocmask, name: "rt_sigprocmask", why: "derived: all; signal masks" },
    Allowed { nr: libc::SYS_rt_sigreturn, name: "rt_sigreturn", why: "derived: all; return from handler" },
    Allowed { nr: libc::SYS_rt_sigsuspend, name: "rt_sigsuspend", why: "derived: shell; wait for signal (shells)" },
    Allowed { nr: libc::SYS_rt_sigpending, name: "rt_sigpending", why: "pending signals" },
    Allowed { nr: libc::SYS_rt_sigtimedwait, name: "rt_sigtimedwait", why: "sigwait" },
    Allowed { nr: libc::SYS_sigaltstack, name: "sigaltstack", why: "derived: python,cargo; stack-overflow handlers (Rust, Python, Go)" },
    Allowed { nr: libc::SYS_restart_syscall, name: "restart_syscall", why: "derived: cargo; kernel-internal restart after a signal" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_pause, name: "pause", why: "wait for signal" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_alarm, name: "alarm", why: "derived: git; timeouts (git progress)" },
    Allowed { nr: libc::SYS_getitimer, name: "getitimer", why: "interval timers" },
    Allowed { nr: libc::SYS_setitimer, name: "setitimer", why: "derived: git; interval timers (git progress)" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_signalfd, name: "signalfd", why: "signals as fds" },
    Allowed { nr: libc::SYS_signalfd4, name: "signalfd4", why: "signals as fds" },
    Allowed { nr: libc::SYS_clock_gettime, name: "clock_gettime", why: "time (vDSO fallback)" },
    Allowed { nr: libc::SYS_clock_getres, name: "clock_getres", why: "time (vDSO fallback)" },
    Allowed { nr: libc::SYS_gettimeofday, name: "gettimeofday", why: "time (vDSO fallback)" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_time, name: "time", why: "time (vDSO fallback)" },
    Allowed { nr: libc::SYS_nanosleep, name: "nanosleep", why: "sleep" },
    Allowed { nr: libc::SYS_clock_nanosleep, name: "clock_nanosleep", why: "derived: python,shell; sleep" },
    Allowed { nr: libc::SYS_timer_create, name: "timer_create", why: "derived: shell; POSIX timers (timeout(1))" },
    Allowed { nr: libc::SYS_timer_settime, name: "timer_settime", why: "derived: shell; POSIX timers" },
    Allowed { nr: libc::SYS_timer_gettime, name: "timer_gettime", why: "POSIX timers" },
    Allowed { nr: libc::SYS_timer_getoverrun, name: "timer_getoverrun", why: "POSIX timers" },
    Allowed { nr: libc::SYS_timer_delete, name: "timer_delete", why: "POSIX timers" },
    Allowed { nr: libc::SYS_timerfd_create, name: "timerfd_create", why: "timers as fds (event loops)" },
    Allowed { nr: libc::SYS_timerfd_settime, name: "timerfd_settime", why: "timers as fds" },
    Allowed { nr: libc::SYS_timerfd_gettime, name: "timerfd_gettime", why: "timers as fds" },
    // Memory. Locking is bounded by RLIMIT_MEMLOCK; NUMA policy calls affect only the caller's own
    // pages.
    Allowed { nr: libc::SYS_brk, name: "brk", why: "derived: all; heap" },
    Allowed { nr: libc::SYS_mmap, name: "mmap", why: "derived: all; memory and file mapping" },
    Allowed { nr: libc::SYS_munmap, name: "munmap", why: "derived: all; memory" },
    Allowed { nr: libc::SYS_mprotect, name: "mprotect", why: "derived: all; memory (loader, JITs)" },
    Allowed { nr: libc::SYS_mremap, name: "mremap", why: "derived: python; realloc of large blocks" },
    Allowed { nr: libc::SYS_msync, name: "msync", why: "mapped file io" },
    Allowed { nr: libc::SYS_mincore, name: "mincore", why: "page residency queries" },
    Allowed { nr: libc::SYS_madvise, name: "madvise", why: "derived: python,node,git,cargo; allocators, GC" },
    Allowed { nr: libc::SYS_mlock, name: "mlock", why: "bounded by RLIMIT_MEMLOCK (gpg, crypto tests)" },
    Allowed { nr: libc::SYS_mlock2, name: "mlock2", why: "bounded by RLIMIT_MEMLOCK" },
    Allowed { nr: libc::SYS_munlock, name: "munlock", why: "undo mlock" },
    Allowed { nr: libc::SYS_mlockall, name: "mlockall", why: "bounded by RLIMIT_MEMLOCK" },
    Allowed { nr: libc::SYS_munlockall, name: "munlockall", why: "undo mlockall" },
    Allowed { nr: libc::SYS_membarrier, name: "membarrier", why: "runtimes (.NET, JVM, liburcu)" },
    Allowed { nr: libc::SYS_pkey_alloc, name: "pkey_alloc", why: "derived: node; memory protection keys for the caller's own pages (V8 probes them)" },
    Allowed { nr: libc::SYS_pkey_free, name: "pkey_free", why: "memory protection keys" },
    Allowed { nr: libc::SYS_pkey_mprotect, name: "pkey_mprotect", why: "memory protection keys" },
    #[cfg(not(target_arch = "riscv64"))] // libc 0.2 has no constant there
    Allowed { nr: libc::SYS_mseal, name: "mseal", why: "seal the caller's own mappings (hardening in newer glibc and browsers)" },
    Allowed { nr: libc::SYS_get_mempolicy, name: "get_mempolicy", why: "derived: shell; NUMA policy of own pages (ps via libnuma)" },
    Allowed { nr: libc::SYS_set_mempolicy, name: "set_mempolicy", why: "derived: shell; NUMA policy of own pages (ps via libnuma)" },
    Allowed { nr: libc::SYS_mbind, name: "mbind", why: "NUMA policy of own pages" },
    Allowed { nr: libc::SYS_set_mempolicy_home_node, name: "set_mempolicy_home_node", why: "NUMA policy of own pages" },
    Allowed { nr: libc::SYS_memfd_create, name: "memfd_create", why: "anonymous files (JITs, Wayland-free shm, sealed re-exec)" },
    Allowed { nr: libc::SYS_futex, name: "futex", why: "derived: all; locks, thread join" },
    Allowed { nr: libc::SYS_futex_waitv, name: "futex_waitv", why: "wait on several futexes (Wine, newer runtimes)" },
    // File io on open descriptors.
    Allowed { nr: libc::SYS_read, name: "read", why: "derived: all; file io" },
    Allowed { nr: libc::SYS_write, name: "write", why: "derived: all; file io" },
    Allowed { nr: libc::SYS_readv, name: "readv", why: "file io" },
    Allowed { nr: libc::SYS_writev, name: "writev", why: "derived: node; file io" },
    Allowed { nr: libc::SYS_pread64, name: "pread64", why: "derived: all; file io" },
    Allowed { nr: libc::SYS_pwrite64, name: "pwrite64", why: "file io" },
    Allowed { nr: libc::SYS_preadv, name: "preadv", why: "file io" },
    Allowed { nr: libc::SYS_pwritev, name: "pwritev", why: "file io" },
    Allowed { nr: libc::SYS_preadv2, name: "preadv2", why: "file io" },
    Allowed { nr: libc::SYS_pwritev2, name: "pwritev2", why: "file io" },
    Allowed { nr: libc::SYS_lseek, name: "lseek", why: "derived: all; file io" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_open, name: "open", why: "derived: python,cargo; open files" },
    Allowed { nr: libc::SYS_openat, name: "openat", why: "derived: all; open files" },
    Allowed { nr: libc::SYS_openat2, name: "openat2", why: "open files with RESOLVE_* flags" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_creat, name: "creat", why: "derived: shell; create files" },
    Allowed { nr: libc::SYS_close, name: "close", why: "derived: all; fds" },
    Allowed { nr: libc::SYS_close_range, name: "close_range", why: "derived: python; close inherited fds before exec" },
    Allowed { nr: libc::SYS_dup, name: "dup", why: "derived: python,git,shell; fds" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_dup2, name: "dup2", why: "derived: all; fds (shell redirection)" },
    Allowed { nr: libc::SYS_dup3, name: "dup3", why: "fds" },
    Allowed { nr: libc::SYS_fcntl, name: "fcntl", why: "derived: all; fd flags and record locks" },
    Allowed { nr: libc::SYS_ioctl, name: "ioctl", why: "derived: all; arguments filtered: TIOCSTI/TIOCLINUX refused" },
    Allowed { nr: libc::SYS_flock, name: "flock", why: "derived: cargo,shell; advisory locks (cargo, flock(1))" },
    Allowed { nr: libc::SYS_fsync, name: "fsync", why: "derived: python,git; durability" },
    Allowed { nr: libc::SYS_fdatasync, name: "fdatasync", why: "durability" },
    Allowed { nr: libc::SYS_sync_file_range, name: "sync_file_range", why: "durability" },
    Allowed { nr: libc::SYS_syncfs, name: "syncfs", why: "durability of one filesystem" },
    Allowed { nr: libc::SYS_fadvise64, name: "fadvise64", why: "derived: python,node,shell; read-ahead hints" },
    Allowed { nr: libc::SYS_readahead, name: "readahead", why: "read-ahead" },
    Allowed { nr: libc::SYS_fallocate, name: "fallocate", why: "preallocate space" },
    Allowed { nr: libc::SYS_truncate, name: "truncate", why: "file size" },
    Allowed { nr: libc::SYS_ftruncate, name: "ftruncate", why: "derived: cargo; file size" },
    Allowed { nr: libc::SYS_copy_file_range, name: "copy_file_range", why: "derived: shell; in-kernel copy (cp)" },
    Allowed { nr: libc::SYS_sendfile, name: "sendfile", why: "derived: python; in-kernel copy (shutil, servers)" },
    Allowed { nr: libc::SYS_splice, name: "splice", why: "pipe io" },
    Allowed { nr: libc::SYS_tee, name: "tee", why: "pipe io" },
    // File metadata and directories.
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_stat, name: "stat", why: "derived: gcc-make,cargo; metadata" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_lstat, name: "lstat", why: "derived: cargo; metadata" },
    Allowed { nr: libc::SYS_fstat, name: "fstat", why: "derived: python,node,cargo; metadata" },
    Allowed { nr: libc::SYS_newfstatat, name: "newfstatat", why: "derived: all; metadata" },
    Allowed { nr: libc::SYS_statx, name: "statx", why: "derived: python,node,cargo; metadata" },
    Allowed { nr: libc::SYS_statfs, name: "statfs", why: "derived: git,cargo,shell; filesystem info (df, tools checking free space)" },
    Allowed { nr: libc::SYS_fstatfs, name: "fstatfs", why: "derived: shell; filesystem info" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_access, name: "access", why: "derived: all; permission checks" },
    Allowed { nr: libc::SYS_faccessat, name: "faccessat", why: "permission checks" },
    Allowed { nr: libc::SYS_faccessat2, name: "faccessat2", why: "derived: gcc-make,cargo; permission checks" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_readlink, name: "readlink", why: "derived: gcc-make,python,node,git,cargo; symlinks" },
    Allowed { nr: libc::SYS_readlinkat, name: "readlinkat", why: "symlinks" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_getdents, name: "getdents", why: "directory listing" },
    Allowed { nr: libc::SYS_getdents64, name: "getdents64", why: "derived: all; directory listing" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_mkdir, name: "mkdir", why: "derived: python,node,git,cargo,shell; directories" },
    Allowed { nr: libc::SYS_mkdirat, name: "mkdirat", why: "derived: git,shell; directories" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_rmdir, name: "rmdir", why: "derived: python,node,git; directories" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_rename, name: "rename", why: "derived: python,node,git,cargo; rename" },
    #[cfg(not(target_arch = "riscv64"))] // riscv64 has only renameat2
    Allowed { nr: libc::SYS_renameat, name: "renameat", why: "rename" },
    Allowed { nr: libc::SYS_renameat2, name: "renameat2", why: "rename (RENAME_NOREPLACE)" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_link, name: "link", why: "derived: python,git,cargo; hard links" },
    Allowed { nr: libc::SYS_linkat, name: "linkat", why: "derived: cargo; hard links" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_symlink, name: "symlink", why: "derived: python,git,cargo; symlinks" },
    Allowed { nr: libc::SYS_symlinkat, name: "symlinkat", why: "derived: shell; symlinks" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_unlink, name: "unlink", why: "derived: gcc-make,python,node,git,cargo; remove files" },
    Allowed { nr: libc::SYS_unlinkat, name: "unlinkat", why: "derived: gcc-make,python,cargo,shell; remove files" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_mknod, name: "mknod", why: "fifos; device nodes are refused by the kernel in a user namespace and by nodev" },
    Allowed { nr: libc::SYS_mknodat, name: "mknodat", why: "fifos (mkfifo); device nodes refused by the kernel in a user namespace, and nodev" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_chmod, name: "chmod", why: "derived: gcc-make,python,git,cargo,shell; modes" },
    Allowed { nr: libc::SYS_fchmod, name: "fchmod", why: "derived: git,shell; modes" },
    Allowed { nr: libc::SYS_fchmodat, name: "fchmodat", why: "derived: shell; modes" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_fchmodat2, name: "fchmodat2", why: "modes (AT_SYMLINK_NOFOLLOW); libc 0.2 defines it on x86_64 only" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_chown, name: "chown", why: "ownership; only within ids mapped into the job" },
    Allowed { nr: libc::SYS_fchown, name: "fchown", why: "derived: git,shell; ownership; only within ids mapped into the job" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_lchown, name: "lchown", why: "ownership; only within ids mapped into the job" },
    Allowed { nr: libc::SYS_fchownat, name: "fchownat", why: "derived: git,shell; ownership; only within ids mapped into the job (tar, cp -a)" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_utime, name: "utime", why: "timestamps" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_utimes, name: "utimes", why: "timestamps" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_futimesat, name: "futimesat", why: "timestamps" },
    Allowed { nr: libc::SYS_utimensat, name: "utimensat", why: "derived: git,cargo,shell; timestamps (touch, tar, cargo)" },
    Allowed { nr: libc::SYS_getxattr, name: "getxattr", why: "derived: shell; extended attributes (cp -a, tar)" },
    Allowed { nr: libc::SYS_lgetxattr, name: "lgetxattr", why: "extended attributes" },
    Allowed { nr: libc::SYS_fgetxattr, name: "fgetxattr", why: "derived: shell; extended attributes" },
    Allowed { nr: libc::SYS_listxattr, name: "listxattr", why: "extended attributes" },
    Allowed { nr: libc::SYS_llistxattr, name: "llistxattr", why: "derived: shell; extended attributes" },
    Allowed { nr: libc::SYS_flistxattr, name: "flistxattr", why: "derived: shell; extended attributes" },
    Allowed { nr: libc::SYS_setxattr, name: "setxattr", why: "derived: shell; extended attributes; only user.* without capabilities" },
    Allowed { nr: libc::SYS_lsetxattr, name: "lsetxattr", why: "extended attributes; only user.* without capabilities" },
    Allowed { nr: libc::SYS_fsetxattr, name: "fsetxattr", why: "derived: shell; extended attributes; only user.* without capabilities" },
    Allowed { nr: libc::SYS_removexattr, name: "removexattr", why: "derived: shell; extended attributes" },
    Allowed { nr: libc::SYS_lremovexattr, name: "lremovexattr", why: "extended attributes" },
    Allowed { nr: libc::SYS_fremovexattr, name: "fremovexattr", why: "extended attributes" },
    // Waiting on descriptors, pipes and change notification.
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_poll, name: "poll", why: "derived: python,git,cargo; event waiting" },
    Allowed { nr: libc::SYS_ppoll, name: "ppoll", why: "event waiting" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_select, name: "select", why: "event waiting" },
    Allowed { nr: libc::SYS_pselect6, name: "pselect6", why: "derived: gcc-make; event waiting (make)" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_epoll_create, name: "epoll_create", why: "event loops" },
    Allowed { nr: libc::SYS_epoll_create1, name: "epoll_create1", why: "derived: python,node,cargo; event loops" },
    Allowed { nr: libc::SYS_epoll_ctl, name: "epoll_ctl", why: "derived: python,node,cargo; event loops" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_epoll_wait, name: "epoll_wait", why: "derived: python,cargo; event loops" },
    Allowed { nr: libc::SYS_epoll_pwait, name: "epoll_pwait", why: "derived: node; event loops" },
    Allowed { nr: libc::SYS_epoll_pwait2, name: "epoll_pwait2", why: "event loops" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_eventfd, name: "eventfd", why: "event loops" },
    Allowed { nr: libc::SYS_eventfd2, name: "eventfd2", why: "derived: python,node,cargo; event loops" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_pipe, name: "pipe", why: "pipes" },
    Allowed { nr: libc::SYS_pipe2, name: "pipe2", why: "derived: all; pipes" },
    #[cfg(target_arch = "x86_64")]
    Allowed { nr: libc::SYS_inotify_init, name: "inotify_init", why: "file watchers (test runners, bundlers)" },
    Allowed { nr: libc::SYS_inotify_init1, name: "inotify_init1", why: "file watchers" },
    Allowed { nr: libc::SYS_inotify_add_watch, name: "inotify_add_watch", why: "file watchers" },
    Allowed { nr: libc::SYS_inotify_rm_watch, name: "inotify_rm_watch", why: "file watchers" },
    // Sockets. The job has its own network namespace, so these reach only its loopback (and any
    // egress proxy socket the runner provides).
    Allowed { nr: libc::SYS_socket, name: "socket", why: "derived: python,node,git,shell; sockets" },
    Allowed { nr: libc::SYS_socketpair, name: "socketpair", why: "derived: node,cargo; sockets (subprocess pipes, runtimes)" },
    Allowed { nr: libc::SYS_bind, name: "bind", why: "derived: python,node; local servers" },
    Allowed { nr: libc::SYS_listen, name: "listen", why: "derived: python,node; local servers" },
    Allowed { nr: libc::SYS_accept, name: "accept", why: "local servers" },
    Allowed { nr: libc::SYS_accept4, name: "accept4", why: "derived: python,node; local servers" },
    Allowed { nr: libc::SYS_connect, name: "connect", why: "derived: python,node,git,shell; clients (also glibc's nscd probe)" },
    Allowed { nr: libc::SYS_getsockname, name: "getsockname", why: "derived: python,node; sockets" },
    Allowed { nr: libc::SYS_getpeername, name: "getpeername", why: "derived: all; sockets, isatty-like probes" },
    Allowed { nr: libc::SYS_getsockopt, name: "getsockopt", why: "derived: node; sockets" },
    Allowed { nr: libc::SYS_setsockopt, name: "setsockopt", why: "derived: python,node; sockets" },
    Allowed { nr: libc::SYS_sendto, name: "sendto", why: "derived: python; sockets" },
    Allowed { nr: libc::SYS_recvfrom, name: "recvfrom", why: "derived: python,cargo; sockets" },
    Allowed { nr: libc::SYS_sendmsg, name: "sendmsg", why: "sockets, fd passing within the job" },
    Allowed { nr: libc::SYS_recvmsg, name: "recvmsg", why: "sockets, fd passing within the job" },
    Allowed { nr: libc::SYS_sendmmsg, name: "sendmmsg", why: "sockets (glibc resolver)" },
    Allowed { nr: libc::SYS_recvmmsg, name: "recvmmsg", why: "sockets" },
    Allowed { nr: libc::SYS_shutdown, name: "shutdown", why: "derived: node; sockets" },
    // System V and POSIX IPC. The job has its own IPC namespace, so these reach only its own
    // objects.
    Allowed { nr: libc::SYS_shmget, name: "shmget", why: "SysV shared memory" },
    Allowed { nr: libc::SYS_shmat, name: "shmat", why: "SysV shared memory" },
    Allowed { nr: libc::SYS_shmdt, name: "shmdt", why: "SysV shared memory" },
    Allowed { nr: libc::SYS_shmctl, name: "shmctl", why: "SysV shared memory" },
    Allowed { nr: libc::SYS_semget, name: "semget", why: "SysV semaphores" },
    Allowed { nr: libc::SYS_semop, name: "semop", why: "SysV semaphores" },
    Allowed { nr: libc::SYS_semtimedop, name: "semtimedop", why: "SysV semaphores" },
    Allowed { nr: libc::SYS_semctl, name: "semctl", why: "SysV semaphores" },
    Allowed { nr: libc::SYS_msgget, name: "msgget", why: "SysV message queues" },
    Allowed { nr: libc::SYS_msgsnd, name: "msgsnd", why: "SysV message queues" },
    Allowed { nr: libc::SYS_msgrcv, name: "msgrcv", why: "SysV message queues" },
    Allowed { nr: libc::SYS_msgctl, name: "msgctl", why: "SysV message queues" },
    Allowed { nr: libc::SYS_mq_open, name: "mq_open", why: "POSIX message queues" },
    Allowed { nr: libc::SYS_mq_unlink, name: "mq_unlink", why: "POSIX message queues" },
    Allowed { nr: libc::SYS_mq_timedsend, name: "mq_timedsend", why: "POSIX message queues" },
    Allowed { nr: libc::SYS_mq_timedreceive, name: "mq_timedreceive", why: "POSIX message queues" },
    Allowed { nr: libc::SYS_mq_notify, name: "mq_notify", why: "POSIX message queues" },
    Allowed { nr: libc::SYS_mq_getsetattr, name: "mq_getsetattr", why: "POSIX message queues" },
];

/// Syscalls that must never be allowed, whatever a workload asks for. A unit test asserts none of
/// these is in [`ALLOWED`]. The filter does not need this list (the default action refuses them
/// anyway); it exists so that widening [`ALLOWED`] by mistake fails a test.
#[allow(
    dead_code,
    reason = "a guard for tests; the default action refuses these"
)]
pub(crate) const NEVER: &[(i64, &str)] = &[
    // Mounts and the root: the runner built the job's view of the filesystem; the job must not
    // rebuild it.
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "umount2"),
    (libc::SYS_pivot_root, "pivot_root"),
    (libc::SYS_chroot, "chroot"),
    (libc::SYS_move_mount, "move_mount"),
    (libc::SYS_open_tree, "open_tree"),
    (libc::SYS_fsopen, "fsopen"),
    (libc::SYS_fsconfig, "fsconfig"),
    (libc::SYS_fsmount, "fsmount"),
    (libc::SYS_fspick, "fspick"),
    (libc::SYS_mount_setattr, "mount_setattr"),
    // Namespaces: a job that could make a user namespace regains a full capability set inside it.
    (libc::SYS_unshare, "unshare"),
    (libc::SYS_setns, "setns"),
    // Other processes' memory and files: within the job's pid namespace these would still cross
    // between job processes and defeat the runner's per-process assumptions (and LSan, gdb, strace
    // need them: see the module docs).
    (libc::SYS_ptrace, "ptrace"),
    (libc::SYS_process_vm_readv, "process_vm_readv"),
    (libc::SYS_process_vm_writev, "process_vm_writev"),
    (libc::SYS_kcmp, "kcmp"),
    (libc::SYS_pidfd_getfd, "pidfd_getfd"),
    (libc::SYS_process_madvise, "process_madvise"),
    (libc::SYS_get_robust_list, "get_robust_list"),
    (libc::SYS_migrate_pages, "migrate_pages"),
    (libc::SYS_move_pages, "move_pages"),
    // Kernel keyrings are not namespaced by user namespaces.
    (libc::SYS_keyctl, "keyctl"),
    (libc::SYS_add_key, "add_key"),
    (libc::SYS_request_key, "request_key"),
    // Large kernel attack surface with a record of privilege escalations.
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_perf_event_open, "perf_event_open"),
    (libc::SYS_userfaultfd, "userfaultfd"),
    (libc::SYS_io_uring_setup, "io_uring_setup"),
    (libc::SYS_io_uring_enter, "io_uring_enter"),
    (libc::SYS_io_uring_register, "io_uring_register"),
    (libc::SYS_fanotify_init, "fanotify_init"),
    (libc::SYS_fanotify_mark, "fanotify_mark"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_modify_ldt, "modify_ldt"),
    (libc::SYS_name_to_handle_at, "name_to_handle_at"),
    (libc::SYS_open_by_handle_at, "open_by_handle_at"),
    // Whole-machine administration: host time, host identity, kernel modules, power, swap, quotas,
    // logs, accounting.
    (libc::SYS_acct, "acct"),
    (libc::SYS_swapon, "swapon"),
    (libc::SYS_swapoff, "swapoff"),
    (libc::SYS_reboot, "reboot"),
    (libc::SYS_kexec_load, "kexec_load"),
    #[cfg(not(target_arch = "riscv64"))] // libc 0.2 has no constant there
    (libc::SYS_kexec_file_load, "kexec_file_load"),
    (libc::SYS_init_module, "init_module"),
    (libc::SYS_finit_module, "finit_module"),
    (libc::SYS_delete_module, "delete_module"),
    (libc::SYS_quotactl, "quotactl"),
    (libc::SYS_quotactl_fd, "quotactl_fd"),
    (libc::SYS_sethostname, "sethostname"),
    (libc::SYS_setdomainname, "setdomainname"),
    (libc::SYS_settimeofday, "settimeofday"),
    (libc::SYS_clock_settime, "clock_settime"),
    (libc::SYS_clock_adjtime, "clock_adjtime"),
    (libc::SYS_adjtimex, "adjtimex"),
    (libc::SYS_syslog, "syslog"),
    (libc::SYS_vhangup, "vhangup"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_iopl, "iopl"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_ioperm, "ioperm"),
    // sync: writes back every filesystem on the host; glibc's sync() ignores the error, so `sync`
    // still exits 0.
    (libc::SYS_sync, "sync"),
    // Obsolete: removed from or stubbed in current kernels; nothing legitimate calls them.
    (libc::SYS_lookup_dcookie, "lookup_dcookie"),
    (libc::SYS_nfsservctl, "nfsservctl"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_uselib, "uselib"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_ustat, "ustat"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_sysfs, "sysfs"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS__sysctl, "_sysctl"),
];

/// Syscalls answered with `ENOSYS` rather than `EPERM`, by a separate filter, because callers
/// treat only `ENOSYS` as "use the older call". `clone3` carries its flags in memory the filter
/// cannot read; glibc then falls back to `clone`, whose flags are checked.
pub(crate) const ENOSYS: &[(i64, &str)] = &[
    (libc::SYS_clone3, "clone3"),
    // Legacy AIO: see "Calls with special handling".
    (libc::SYS_io_setup, "io_setup"),
    (libc::SYS_io_destroy, "io_destroy"),
    (libc::SYS_io_submit, "io_submit"),
    (libc::SYS_io_cancel, "io_cancel"),
    (libc::SYS_io_getevents, "io_getevents"),
];

#[cfg(test)]
mod tests {
    use super::{ALLOWED, ENOSYS, NEVER};
    use std::collections::{BTreeMap, BTreeSet};

    /// The measured lists. Add a line here when `bench/derive-seccomp.sh` gains a workload.
    #[cfg(target_arch = "x86_64")]
    const DERIVED: &[(&str, &str)] = &[
        ("gcc-make", include_str!("derived/gcc-make.txt")),
        ("python", include_str!("derived/python.txt")),
        ("node", include_str!("derived/node.txt")),
        ("git", include_str!("derived/git.txt")),
        ("cargo", include_str!("derived/cargo.txt")),
        ("shell", include_str!("derived/shell.txt")),
    ];

    fn allowed_names() -> BTreeSet<&'static str> {
        ALLOWED.iter().map(|a| a.name).collect()
    }

    #[test]
    fn allowed_has_no_duplicate_numbers_or_names() {
        let mut numbers = BTreeMap::new();
        let mut names = BTreeSet::new();
        for a in ALLOWED {
            if let Some(other) = numbers.insert(a.nr, a.name) {
                panic!(
                    "syscall number {} is listed as both {other:?} and {:?}",
                    a.nr, a.name
                );
            }
            assert!(
                names.insert(a.name),
                "{:?} is listed twice in ALLOWED",
                a.name
            );
        }
    }

    #[test]
    fn never_and_enosys_have_no_duplicates() {
        for list in [NEVER, ENOSYS] {
            let numbers: BTreeSet<i64> = list.iter().map(|&(nr, _)| nr).collect();
            let names: BTreeSet<&str> = list.iter().map(|&(_, name)| name).collect();
            assert_eq!(numbers.len(), list.len(), "duplicate number in {list:?}");
            assert_eq!(names.len(), list.len(), "duplicate name in {list:?}");
        }
    }

    #[test]
    fn allowed_never_and_enosys_are_disjoint() {
        let allowed: BTreeMap<i64, &str> = ALLOWED.iter().map(|a| (a.nr, a.name)).collect();
        for &(nr, name) in NEVER {
            assert!(
                !allowed.contains_key(&nr),
                "{name:?} is in NEVER and ALLOWED"
            );
            assert!(
                !ENOSYS.iter().any(|&(n, _)| n == nr),
                "{name:?} is in NEVER and ENOSYS"
            );
        }
        for &(nr, name) in ENOSYS {
            assert!(
                !allowed.contains_key(&nr),
                "{name:?} is in ENOSYS and ALLOWED"
            );
        }
    }

    #[test]
    fn clone3_is_answered_enosys_and_never_allowed() {
        assert!(ENOSYS.contains(&(libc::SYS_clone3, "clone3")));
        assert!(!ALLOWED.iter().any(|a| a.nr == libc::SYS_clone3));
    }

    #[test]
    fn the_calls_that_rebuild_confinement_stay_refused() {
        let never: BTreeSet<&str> = NEVER.iter().map(|&(_, name)| name).collect();
        for name in [
            "mount",
            "umount2",
            "pivot_root",
            "chroot",
            "move_mount",
            "open_tree",
            "fsopen",
            "fsmount",
            "mount_setattr",
            "unshare",
            "setns",
            "ptrace",
            "process_vm_writev",
            "pidfd_getfd",
            "keyctl",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "open_by_handle_at",
            "kexec_load",
            "init_module",
            "finit_module",
        ] {
            assert!(never.contains(name), "{name:?} must be in NEVER");
        }
    }

    #[test]
    fn every_allowed_entry_says_why() {
        for a in ALLOWED {
            let reason = a.why.split_once("; ").map_or(a.why, |(_, rest)| rest);
            assert!(!reason.trim().is_empty(), "{:?} has no reason", a.name);
        }
    }

    /// Catches copy-paste slips such as `nr: libc::SYS_open, name: "openat"`: reads this file's
    /// own source and compares each `libc::SYS_<x>` with the name that follows it.
    #[test]
    fn every_entry_names_its_own_constant() {
        let source = include_str!("table.rs");
        let data = source.split("#[cfg(test)]").next().unwrap_or(source);
        let mut checked = 0;
        for chunk in data.split("libc::SYS_").skip(1) {
            let constant: String = chunk
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if constant.is_empty() {
                continue; // prose such as `libc::SYS_*`
            }
            let name = chunk.split('"').nth(1).unwrap_or_default();
            assert_eq!(constant, name, "libc::SYS_{constant} is named {name:?}");
            checked += 1;
        }
        #[cfg(target_arch = "x86_64")]
        assert_eq!(checked, ALLOWED.len() + NEVER.len() + ENOSYS.len());
        assert!(checked > 0);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_derived_syscall_is_classified() {
        let allowed = allowed_names();
        let refused: BTreeSet<&str> = NEVER.iter().chain(ENOSYS).map(|&(_, name)| name).collect();
        let mut unclassified = Vec::new();
        for (workload, list) in DERIVED {
            for name in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
                if !allowed.contains(name) && !refused.contains(name) {
                    unclassified.push(format!("{name} (from {workload})"));
                }
            }
        }
        assert!(
            unclassified.is_empty(),
            "derived syscalls missing from table.rs: {unclassified:?}; add each to ALLOWED \
             with a reason, or to NEVER and explain in the module docs what breaks"
        );
    }

    /// A measured workload that needs a refused call is a finding: the module docs must say what
    /// calls it and what breaks.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_refused_derived_syscall_is_explained_in_the_module_docs() {
        let docs: String = include_str!("table.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        for (workload, list) in DERIVED {
            for name in list.lines().map(str::trim) {
                let refused = NEVER.iter().chain(ENOSYS).any(|&(_, n)| n == name);
                assert!(
                    !refused || docs.contains(&format!("`{name}`")),
                    "{workload} uses refused {name:?}; explain it in the module docs"
                );
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn derived_attributions_match_the_lists() {
        for a in ALLOWED {
            let used_by: Vec<&str> = DERIVED
                .iter()
                .filter(|(_, list)| list.lines().any(|l| l.trim() == a.name))
                .map(|&(workload, _)| workload)
                .collect();
            let expected = match used_by.len() {
                0 => String::new(),
                n if n == DERIVED.len() => "derived: all; ".to_owned(),
                _ => format!("derived: {}; ", used_by.join(",")),
            };
            let claimed = if a.why.starts_with("derived: ") {
                a.why
                    .split_once("; ")
                    .map_or(a.why, |(head, _)| head)
                    .to_owned()
                    + "; "
            } else {
                String::new()
            };
            assert_eq!(claimed, expected, "attribution of {:?} is stale", a.name);
        }
    }
}
