//! The containment battery: each case runs a job that attempts an escape or a forbidden
//! action, asserts what the job saw (the errno, the observable), and checks the host
//! afterwards (file absent, process gone, runner alive and reporting).
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

use bulwark_tests::{one_step, processes_with, sha256_file, Env, SYSCALL_PY};

fn py(env: &Env, name: &str, body: &str) -> String {
    env.write_src(name, &format!("{SYSCALL_PY}\n{body}\n"));
    format!("python3 {name}")
}

/// A step that forks until refused, then prints how far it got (run with `pids = 64`).
const FORK_BOMB: &str = r#"
import time
kids = []
err = "none"
for i in range(10000):
    try:
        pid = os.fork()
    except OSError as e:
        err = errno.errorcode[e.errno]; break
    if pid == 0:
        time.sleep(30); os._exit(0)
    kids.append(pid)
print(f"forked={len(kids)} stopped_by={err}", flush=True)
"#;

/// The [`FORK_BOMB`] job, run with `pids = 64`, was stopped by its cgroup's pids limit.
fn assert_stopped_by_the_pids_limit(r: &bulwark_tests::Run) {
    r.assert_code(0);
    let v = r.value("forked");
    let n: usize = v.split_whitespace().next().unwrap().parse().unwrap();
    assert!(v.ends_with("stopped_by=EAGAIN"), "{r}");
    assert!(n < 64, "forked {n} with pids = 64");
    assert!(
        r.result()["cgroup_counters"]["pids_max_hit"]
            .as_u64()
            .unwrap()
            > 0,
        "{r}"
    );
}

/// 64 loopback TCP connections inside the job; each reader reads for 50 ms (so the kernel
/// grows the buffers) and then stops while its writer writes until the kernel says EAGAIN.
/// Prints `queued_mib=N`, what the kernel accepted in all.
const SOCKET_FILL: &str = r#"
import socket, time
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(64)
port = ls.getsockname()[1]; held = []; total = 0; chunk = b"x" * 65536
for i in range(64):
    c = socket.create_connection(("127.0.0.1", port)); s, _ = ls.accept()
    c.setblocking(False); s.setblocking(False)
    t = time.time()
    while time.time() - t < 0.05:
        try: c.send(chunk)
        except BlockingIOError: pass
        try: s.recv(1 << 20)
        except BlockingIOError: pass
    while True:
        try: total += c.send(chunk)
        except OSError: break
    held.append((c, s))
print("queued_mib=%d" % (total >> 20))
"#;

/// A step that asks for 512 MiB at once (run with a smaller memory limit).
const MEMORY_BOMB: &str =
    "exec python3 -c 'b = bytearray(512 * 1024 * 1024); print(\"allocated\")'";

/// The [`MEMORY_BOMB`] job was killed by the OOM killer of its own cgroup.
fn assert_oom_killed_in_the_jobs_cgroup(r: &bulwark_tests::Run) {
    r.assert_code(1);
    let res = r.result();
    assert_eq!(res["steps"][0]["signal"], 9, "{r}");
    assert_eq!(res["steps"][0]["limit"], "memory", "{r}");
    assert!(
        res["cgroup_counters"]["oom_kills"].as_u64().unwrap() >= 1,
        "{r}"
    );
    assert!(!r.log.contains("allocated"));
}

#[test]
fn host_only_paths_are_absent_and_system_paths_are_read_only() {
    let env = Env::new("paths");
    let state = env.state.display().to_string();
    let marker = format!("bulwark-write-test-{}", bulwark_tests::random_hex(4));
    let run = py(
        &env,
        "paths.py",
        &format!(
            r#"
for p in ["/root", "/etc/shadow", "/home", "/var/lib/bulwark", "{state}", "/run/bulwark", "/etc/bulwark", "/sys"]:
    print(f"exists {{p}}={{os.path.lexists(p)}}")
for p in ["/usr/{marker}", "/etc/{marker}", "/{marker}", "/tools/{marker}"]:
    try:
        open(p, "w").write("x")
        print(f"write {{p}}=ok")
    except OSError as e:
        print(f"write {{p}}={{errno.errorcode[e.errno]}}")
"#
        ),
    );
    let r = env.run(&one_step("paths", &run, ""));
    r.assert_code(0);
    for p in [
        "/root",
        "/etc/shadow",
        "/home",
        "/var/lib/bulwark",
        &state,
        "/run/bulwark",
        "/etc/bulwark",
        "/sys",
    ] {
        assert_eq!(
            r.value(&format!("exists {p}")),
            "False",
            "{p} is visible in the sandbox\n{r}"
        );
    }
    for p in [
        format!("/usr/{marker}"),
        format!("/etc/{marker}"),
        format!("/{marker}"),
        format!("/tools/{marker}"),
    ] {
        let seen = r.value(&format!("write {p}"));
        assert!(
            seen == "EROFS" || seen == "EACCES",
            "write {p}: {seen}\n{r}"
        );
    }
    // And nothing appeared on the host.
    assert!(!std::path::Path::new(&format!("/usr/{marker}")).exists());
    assert!(!std::path::Path::new(&format!("/etc/{marker}")).exists());
}

#[cfg(target_arch = "x86_64")]
#[test]
fn the_root_and_every_system_mount_are_sealed_read_only_by_the_mounts_themselves() {
    // Landlock would refuse these writes anyway; this checks the mount layer on its own, from
    // the job's /proc/self/mountinfo: everything but the job's writable places is read-only,
    // and nothing the job can write to honours set-user-id bits or device nodes.
    let env = Env::new("seal");
    let run = py(
        &env,
        "mounts.py",
        r#"
for line in open("/proc/self/mountinfo"):
    f = line.split()
    print(f"mount {f[4]}={f[5]}")
"#,
    );
    let r = env.run(&one_step("seal", &run, ""));
    r.assert_code(0);
    let mounts: Vec<(String, Vec<String>)> = r
        .log
        .lines()
        .filter_map(|l| l.strip_prefix("mount "))
        .filter_map(|l| l.split_once('='))
        .map(|(m, o)| (m.to_string(), o.split(',').map(String::from).collect()))
        .collect();
    assert!(mounts.iter().any(|(m, _)| m == "/usr"), "{r}");
    let writable = ["/workspace", "/tmp", "/dev/shm", "/proc"];
    let devices = [
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
    ];
    for (mount, opts) in &mounts {
        let has = |o: &str| opts.iter().any(|x| x == o);
        if devices.contains(&mount.as_str()) {
            continue; // host device nodes keep the host mount's flags; no file to execute
        }
        assert!(has("nosuid"), "{mount} lacks nosuid: {opts:?}");
        if writable.contains(&mount.as_str()) {
            assert!(has("nodev"), "{mount} lacks nodev: {opts:?}");
        } else {
            assert!(has("ro"), "{mount} is writable: {opts:?}\n{r}");
            if mount != "/dev" {
                assert!(has("nodev"), "{mount} lacks nodev: {opts:?}");
            }
        }
    }
}

#[test]
fn bulwark_exec_never_hands_the_job_its_own_stderr() {
    // Redirected to a file, the caller's stderr as the job's own descriptor would let the job
    // truncate that file (and as a terminal, change its settings); the job gets a pipe.
    let env = Env::new("exec-stderr");
    let log = env.dir.join("caller.log");
    fs::write(&log, "caller's earlier lines\n").unwrap();
    let file = fs::OpenOptions::new().append(true).open(&log).unwrap();
    let status = std::process::Command::new(bulwark_tests::bulwark_bin())
        .args(["exec", "--config"])
        .arg(&env.config)
        .args([
            "--",
            "/bin/sh",
            "-c",
            "echo fd1=$(readlink /proc/self/fd/1) fd2=$(readlink /proc/self/fd/2); \
             python3 -c 'import os; os.ftruncate(1, 0)' 2>/dev/null; \
             echo after",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .status()
        .unwrap();
    let text = fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert!(text.starts_with("caller's earlier lines\n"), "{text}");
    assert!(
        text.contains("fd1=pipe:[") && text.contains("fd2=pipe:["),
        "{text}"
    );
    assert!(text.contains("after"), "{text}");
}

/// Starts the rest of its arguments with descriptor 7 open on the file named first (inheritable)
/// and under a seccomp filter that answers `close_range` with EPERM, as a container runtime's
/// profile or an old kernel (ENOSYS) would.
const NO_CLOSE_RANGE_PY: &str = r#"
import ctypes, os, struct, sys
os.dup2(os.open(sys.argv[1], os.O_RDONLY), 7)
os.set_inheritable(7, True)
libc = ctypes.CDLL(None, use_errno=True)
CLOSE_RANGE = 436
insns = [(0x20, 0, 0, 0),                          # ld  [nr]
         (0x15, 0, 1, CLOSE_RANGE),                # jeq close_range
         (0x06, 0, 0, 0x00050000 | 1),             # ret ERRNO(EPERM)
         (0x06, 0, 0, 0x7fff0000)]                 # ret ALLOW
code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in insns))
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
prog = Prog(len(insns), ctypes.addressof(code))
if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:
    sys.exit(f"installing the filter: errno {ctypes.get_errno()}")
os.execv(sys.argv[2], sys.argv[2:])
"#;

#[test]
fn inherited_descriptors_are_closed_even_where_close_range_is_refused() {
    // The helper and every job process close what they inherited with close_range, and fall
    // back to /proc/self/fd where it is refused. A descriptor the runner's caller left open
    // (here 7, on a file only the caller should read) must not reach the job either way.
    let env = Env::new("no-close-range");
    let secret = env.dir.join("caller-secret");
    fs::write(&secret, "caller's secret\n").unwrap();
    let wrapper = env.dir.join("no_close_range.py");
    fs::write(&wrapper, NO_CLOSE_RANGE_PY).unwrap();
    let out = std::process::Command::new("python3")
        .arg(&wrapper)
        .arg(&secret)
        .arg(bulwark_tests::bulwark_bin())
        .args(["exec", "--config"])
        .arg(&env.config)
        .args([
            "--",
            "/bin/sh",
            "-c",
            "echo fds: $(ls /proc/self/fd); \
             python3 -c 'import ctypes; l = ctypes.CDLL(None, use_errno=True); \
             r = l.syscall(436, 100, 100, 0); print(\"close_range:\", r, ctypes.get_errno())'",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    // The filter was on all the way down: the job's own close_range was refused too.
    assert!(text.contains("close_range: -1 1\n"), "{text}");
    // 0, 1, 2, and the directory `ls` itself opened: nothing inherited.
    assert!(text.contains("fds: 0 1 2 3\n"), "{text}");
    assert!(!text.contains("caller's secret"), "{text}");
}

#[test]
fn dangerous_system_calls_are_refused() {
    let env = Env::new("syscalls");
    // Arguments are chosen so that, were the call not filtered, the kernel would answer
    // something other than EPERM (EFAULT, EINVAL, ENOTTY, or success) for most of them.
    let run = py(
        &env,
        "sys.py",
        r#"
nsfd = os.open("/proc/self/ns/net", os.O_RDONLY)
report("mount", 165, 0, 0, 0, 0, 0)
report("umount2", 166, 0, 0)
report("pivot_root", 155, 0, 0)
report("chroot", 161, 0)
report("unshare_user", 272, 0x10000000)
report("unshare_net", 272, 0x40000000)
report("setns", 308, nsfd, 0)
report("ptrace_traceme", 101, 0, 0, 0, 0)
report("keyctl", 250, 0, 0xfffffffd, 0)
report("add_key", 248, 0, 0, 0, 0, 0)
report("request_key", 249, 0, 0, 0, 0)
report("io_uring_setup", 425, 1, 0)
report("io_uring_enter", 426, 0, 0, 0, 0, 0, 0)
report("io_uring_register", 427, 0, 0, 0, 0)
report("bpf", 321, 0, 0, 0)
report("perf_event_open", 298, 0, 0, 0xffffffffffffffff, 0xffffffffffffffff, 0)
report("userfaultfd", 323, 0)
report("process_vm_readv", 310, os.getpid(), 0, 0, 0, 0, 0)
report("process_vm_writev", 311, os.getpid(), 0, 0, 0, 0, 0)
report("fsopen", 430, 0, 0)
report("open_tree", 428, 0xffffff9c, 0, 0)
report("move_mount", 429, 0, 0, 0, 0, 0)
report("acct", 163, 0)
report("swapon", 167, 0, 0)
report("name_to_handle_at", 303, 0xffffff9c, 0, 0, 0, 0)
report("init_module", 175, 0, 0, 0)
report("clone3", 435, 0, 0)
# Legacy AIO: contexts count against the host-wide fs.aio-max-nr (allowed, this would be EFAULT).
report("io_setup", 206, 1, 0)
# Address families the network namespace does not confine (AF_VSOCK reaches the hypervisor
# host from any namespace), and raw packet sockets: refused by family. Controls: inet, netlink.
report("socket_vsock", 41, 40, 1, 0)
report("socketpair_vsock", 53, 40, 1, 0, 0)
report("socket_packet", 41, 17, 3, 0)
report("socket_inet", 41, 2, 1, 0)
report("socket_netlink", 41, 16, 3, 0)
# Netlink beyond routing and socket diagnostics (netfilter, uevents): refused by protocol.
report("socket_netlink_netfilter", 41, 16, 3, 12)
report("socket_netlink_uevent", 41, 16, 2, 15)
# prlimit64 on init (same uid): refused; on itself (pid 0): allowed.
report("prlimit_init", 302, 1, 7, 0, 0)
report("prlimit_self", 302, 0, 7, 0, 0)
# clone with a namespace flag: refused by argument; were it allowed, the child leaves at once.
ctypes.set_errno(0)
r = libc.syscall(ctypes.c_long(56), ctypes.c_ulong(0x10000000 | 17), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
if r == 0:
    os._exit(0)
print("clone_newuser=" + ("ok" if r > 0 else errno.errorcode[ctypes.get_errno()]), flush=True)
# TIOCSTI, plain and with high bits set (the kernel truncates the request to 32 bits).
report("tiocsti", 16, 0, 0x5412, 0)
report("tiocsti_high_bits", 16, 0, 0x100005412, 0)
report("tioclinux", 16, 0, 0x541C, 0)
# Controls: allowed calls behave normally.
report("tcgets_on_dev_null", 16, 0, 0x5401, 0)
report("getpid", 39)
# x32 syscall numbers (nr | 0x40000000) match no allowlist entry: refused, not run.
report("x32_getpid", 0x40000000 | 39)
# Signals to init (outside the job's Landlock domain) are refused by the signal scope.
report("kill_init", 62, 1, 0)
pid = os.fork()
if pid == 0:
    os._exit(7)
print("fork_works=" + str(os.waitpid(pid, 0)[1] >> 8), flush=True)
"#,
    );
    let r = env.run(&one_step("syscalls", &run, ""));
    r.assert_code(0);
    for name in [
        "mount",
        "umount2",
        "pivot_root",
        "chroot",
        "unshare_user",
        "unshare_net",
        "setns",
        "ptrace_traceme",
        "keyctl",
        "add_key",
        "request_key",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "process_vm_readv",
        "process_vm_writev",
        "fsopen",
        "open_tree",
        "move_mount",
        "acct",
        "swapon",
        "name_to_handle_at",
        "init_module",
        "clone_newuser",
        "tiocsti",
        "tiocsti_high_bits",
        "tioclinux",
    ] {
        assert_eq!(r.value(name), "EPERM", "{name}\n{r}");
    }
    for name in ["socket_vsock", "socketpair_vsock", "socket_packet"] {
        assert_eq!(r.value(name), "EAFNOSUPPORT", "{name}\n{r}");
    }
    for name in ["socket_netlink_netfilter", "socket_netlink_uevent"] {
        assert_eq!(r.value(name), "EPROTONOSUPPORT", "{name}\n{r}");
    }
    assert_eq!(r.value("prlimit_init"), "EPERM", "{r}");
    for name in ["socket_inet", "socket_netlink", "prlimit_self"] {
        assert_eq!(r.value(name), "ok", "{name}\n{r}");
    }
    assert_eq!(
        r.value("clone3"),
        "ENOSYS",
        "clone3 must answer ENOSYS so libc falls back to clone\n{r}"
    );
    assert_eq!(
        r.value("io_setup"),
        "ENOSYS",
        "legacy AIO must answer ENOSYS so libaio users fall back\n{r}"
    );
    assert_eq!(
        r.value("tcgets_on_dev_null"),
        "ENOTTY",
        "ioctl itself must stay allowed\n{r}"
    );
    assert_eq!(r.value("getpid"), "ok");
    assert_eq!(
        r.value("x32_getpid"),
        "EPERM",
        "x32 numbers must not bypass the allowlist\n{r}"
    );
    assert_eq!(
        r.value("kill_init"),
        "EPERM",
        "a job must not signal its init\n{r}"
    );
    assert_eq!(r.value("fork_works"), "7");
}

#[test]
fn job_holds_no_privilege_and_sees_only_its_own_processes() {
    let env = Env::new("status");
    let run = r#"grep -E '^(NoNewPrivs|Seccomp|Cap[A-Za-z]+):' /proc/self/status | tr -d '\t ' | sed 's/:/=/'
grep -E '^Cap[A-Za-z]+:' /proc/1/status | tr -d '\t ' | sed 's/^/init_/; s/:/=/'
echo "pids=$(ls /proc | grep -E '^[0-9]+$' | tr '\n' ' ')"
echo "fds=$(ls /proc/self/fd | tr '\n' ' ')"
echo "uid=$(id -u) gid=$(id -g) groups=$(id -G)"
cat /proc/1/environ > /dev/null 2>&1 && echo "init_environ=readable" || echo "init_environ=denied"
ls /proc/1/fd > /dev/null 2>&1 && echo "init_fds=readable" || echo "init_fds=denied"
echo "env=$(env | cut -d= -f1 | sort | tr '\n' ' ')""#;
    let job = format!(
        "{}\n[steps.env]\nFOO = \"bar\"\n",
        one_step("status", run, "")
    );
    let (mut cmd, out) = env.command(&job, &[]);
    // A secret in the runner's own environment must not reach the job or its init.
    cmd.env("BULWARK_TEST_RUNNER_SECRET", "s3cr3t-value");
    let r = bulwark_tests::Run::from_output(cmd.output().unwrap(), out);
    r.assert_code(0);
    assert_eq!(r.value("NoNewPrivs"), "1");
    assert_eq!(r.value("Seccomp"), "2");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(r.value(cap), "0000000000000000", "{cap}\n{r}");
    }
    // Init gave its capabilities up before the step started: none effective, none to pass
    // on, and in its permitted set only CAP_WAKE_ALARM (bit 35), which means nothing outside
    // the initial user namespace and keeps the kernel ranking init above the job (the
    // `nice_init` case of the scheduling test below fails without it).
    for cap in ["CapInh", "CapEff", "CapBnd", "CapAmb"] {
        let key = format!("init_{cap}");
        assert_eq!(r.value(&key), "0000000000000000", "{key}\n{r}");
    }
    assert_eq!(r.value("init_CapPrm"), "0000000800000000", "{r}");
    // pid 1 is init; the rest are the step's shell and its pipeline.
    let pids: Vec<u32> = r
        .value("pids")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(pids.contains(&1), "{r}");
    assert!(
        pids.iter().all(|p| *p < 100) && pids.len() < 10,
        "host processes visible: {pids:?}\n{r}"
    );
    // ls's own directory descriptor is 3; nothing else was inherited.
    assert_eq!(r.value("fds"), "0 1 2 3 ", "{r}");
    assert_eq!(r.value("uid"), "1000 gid=1000 groups=1000");
    assert_eq!(r.value("init_environ"), "denied");
    assert_eq!(r.value("init_fds"), "denied");
    // Exactly the declared environment plus PATH, HOME, TMPDIR (and the shell's own PWD).
    let names: Vec<&str> = r.value("env").leak().split_whitespace().collect();
    let allowed = [
        "FOO", "HOME", "PATH", "TMPDIR", "PWD", "OLDPWD", "SHLVL", "_",
    ];
    assert!(
        names.iter().all(|n| allowed.contains(n)),
        "unexpected environment {names:?}\n{r}"
    );
    assert!(
        names.contains(&"FOO")
            && names.contains(&"PATH")
            && names.contains(&"HOME")
            && names.contains(&"TMPDIR")
    );
    assert!(!r.log.contains("s3cr3t-value") && !r.stdout.contains("s3cr3t-value"));
    let confirmed = r.result()["isolation"]["confirmed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect::<Vec<_>>();
    for layer in [
        "seccomp-allowlist",
        "no-new-privs",
        "capabilities-none",
        // Each namespace is confirmed by the job's process comparing its own nsfs identities
        // with the runner's just before exec.
        "user-namespace",
        "mount-namespace",
        "pid-namespace",
        "network-namespace",
        "ipc-namespace",
        "uts-namespace",
        "cgroup-namespace",
    ] {
        assert!(
            confirmed.iter().any(|c| c == layer),
            "{layer} not confirmed: {confirmed:?}"
        );
    }
    assert!(
        confirmed
            .iter()
            .any(|c| c.starts_with("landlock-abi-") && c.ends_with("-fully-enforced")),
        "{confirmed:?}"
    );
}

/// `cmd`, started by `sh` after `prelude` (which sets up the runner's inherited state).
fn started_by_shell(prelude: &str, cmd: &std::process::Command) -> std::process::Command {
    let mut wrapped = std::process::Command::new("sh");
    wrapped
        .arg("-c")
        .arg(format!("{prelude}; exec \"$0\" \"$@\""))
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(std::process::Stdio::null());
    wrapped
}

/// A job cannot take real-time priority, whatever limits the runner was started with (a
/// SCHED_FIFO spinner is not throttled by a CPU limit), nor slow init down: rescheduling,
/// pinning or renicing pid 1 is refused, and init's scheduling is unchanged afterwards.
///
/// Two barriers refuse the calls on init: the seccomp filter (pid 1, unit-tested in
/// `sandbox/src/seccomp`), and the kernel itself, since init keeps a capability in its
/// permitted set that the job does not hold (`cap_safe_nice`); this test cannot tell which one
/// answered, except for `nice_init`, which the filter allows (it cannot tell `renice -p 1`
/// from `renice -p` of a job process) and only the kernel refuses.
#[test]
fn a_job_gets_no_real_time_priority_and_cannot_reschedule_init() {
    let env = Env::new("sched");
    // Whether this host lets the runner be started with a real-time limit at all (a
    // container's root may lack CAP_SYS_RESOURCE): only then does rtprio 0 in the job show
    // the sandbox's own limit.
    let raised = std::process::Command::new("sh")
        .args(["-c", "prlimit --pid $$ --rtprio=50:50 2>/dev/null"])
        .status()
        .is_ok_and(|s| s.success());
    let run = py(
        &env,
        "sched.py",
        r#"
import resource
def attempt(name, f):
    try:
        f()
        print(name + "=ok", flush=True)
    except OSError as e:
        print(name + "=" + errno.errorcode.get(e.errno, str(e.errno)), flush=True)
print("rtprio=%d:%d" % resource.getrlimit(resource.RLIMIT_RTPRIO))
print("memlock_hard=%d" % resource.getrlimit(resource.RLIMIT_MEMLOCK)[1])
attempt("fifo_self", lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1)))
attempt("idle_init", lambda: os.sched_setscheduler(1, os.SCHED_IDLE, os.sched_param(0)))
attempt("affinity_init", lambda: os.sched_setaffinity(1, {0}))
attempt("affinity_self", lambda: os.sched_setaffinity(0, os.sched_getaffinity(0)))
attempt("nice_init", lambda: os.setpriority(os.PRIO_PROCESS, 1, 19))
attempt("nice_user", lambda: os.setpriority(os.PRIO_USER, 0, 19))
attempt("nice_self", lambda: os.setpriority(os.PRIO_PROCESS, 0, 5))
print("init_sched=%d" % os.sched_getscheduler(1))
print("init_nice=%d" % os.getpriority(os.PRIO_PROCESS, 1))
print("init_cpus=%d" % len(os.sched_getaffinity(1)))
print("own_cpus=%d" % len(os.sched_getaffinity(0)))
"#,
    );
    let (cmd, out) = env.command(&one_step("sched", &run, ""), &[]);
    // As root, the runner itself is given real-time and unlimited lock limits first.
    let prelude =
        "prlimit --pid $$ --rtprio=50:50 --memlock=unlimited:unlimited 2>/dev/null || true";
    let r = bulwark_tests::Run::from_output(started_by_shell(prelude, &cmd).output().unwrap(), out);
    r.assert_code(0);
    assert_eq!(r.value("rtprio"), "0:0", "{r}");
    if !raised {
        eprintln!(
            "SKIP part: this host does not let the runner be started with RLIMIT_RTPRIO above 0 \
             (prlimit refused), so the job's 0 is not shown to be the sandbox's own"
        );
    }
    assert!(
        r.value("memlock_hard").parse::<u64>().unwrap() <= 8 << 20,
        "{r}"
    );
    assert_eq!(r.value("fifo_self"), "EPERM", "{r}");
    for refused in ["idle_init", "affinity_init", "nice_init", "nice_user"] {
        assert_eq!(r.value(refused), "EPERM", "{refused}: {r}");
    }
    assert_eq!(r.value("affinity_self"), "ok", "{r}");
    assert_eq!(r.value("nice_self"), "ok", "{r}");
    assert_eq!(r.value("init_sched"), "0", "init stays SCHED_OTHER: {r}");
    assert_eq!(r.value("init_nice"), "0", "{r}");
    assert_eq!(r.value("init_cpus"), r.value("own_cpus"), "{r}");
}

#[test]
fn a_runner_started_with_umask_077_still_runs_jobs() {
    // Hardened service units often set UMask=0077. The job directory must still be passable
    // by the job's own uid (root mode), and the job gets the operator's umask, as under bwrap.
    let env = Env::new("umask");
    let (cmd, out) = env.command(
        &one_step("umask", "echo \"umask=$(umask)\"; echo made > made.txt", ""),
        &[],
    );
    let r =
        bulwark_tests::Run::from_output(started_by_shell("umask 077", &cmd).output().unwrap(), out);
    r.assert_code(0);
    assert_eq!(r.value("umask"), "0077", "{r}");
}

#[test]
fn a_job_starts_with_every_signal_at_its_default_action() {
    // Ignored signals survive exec: the runner's runtime ignores SIGPIPE, and whoever started
    // the runner may ignore others (here USR1 and HUP). None of that may reach the job, or a
    // build's `yes | head -1` reports a broken pipe instead of being stopped by the signal.
    let env = Env::new("signals");
    let run = r#"grep -E '^(SigIgn|SigBlk):' /proc/self/status | tr -d '\t ' | sed 's/:/=/'
yes | head -1"#;
    let (cmd, out) = env.command(&one_step("signals", run, ""), &[]);
    let mut wrapped = started_by_shell("trap '' USR1 HUP PIPE", &cmd);
    let r = bulwark_tests::Run::from_output(wrapped.output().unwrap(), out);
    r.assert_code(0);
    assert_eq!(r.value("SigIgn"), "0000000000000000", "{r}");
    assert_eq!(r.value("SigBlk"), "0000000000000000", "{r}");
    assert!(!r.log.contains("Broken pipe"), "{r}");
    assert!(r.log.lines().any(|l| l == "y"), "{r}");
}

#[test]
fn landlock_denies_a_path_that_mounts_and_permissions_allow() {
    let env = Env::new("landlock");
    // The canary is in the mount view, owned by the job's uid with mode 0644: only Landlock
    // stands between the job and its contents.
    let run = r#"stat -c 'canary_mode=%a owner=%U' /.bulwark-landlock-canary
cat /.bulwark-landlock-canary 2>&1 | sed 's/^/canary_read=/'
ls / > /dev/null && echo "root_listing=ok""#;
    let r = env.run(&one_step("landlock", run, ""));
    r.assert_code(0);
    assert_eq!(r.value("canary_mode"), "644 owner=build");
    assert!(r.value("canary_read").contains("Permission denied"), "{r}");
    assert_eq!(r.value("root_listing"), "ok");
}

#[test]
fn network_namespace_has_only_loopback_and_the_jobs_own_servers_work() {
    let env = Env::new("net");
    // This host's own, non-loopback address: the job must not reach it.
    let host_addr = bulwark_tests::host_ipv4();
    let target = host_addr.map(|a| a.to_string()).unwrap_or_default();
    let run = py(
        &env,
        "net.py",
        &format!(
            r#"
import socket, threading
ifaces = sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:])
print("interfaces=" + ",".join(ifaces), flush=True)
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
port = srv.getsockname()[1]
def serve():
    c, _ = srv.accept(); c.sendall(b"hello from the job"); c.close()
threading.Thread(target=serve, daemon=True).start()
cli = socket.create_connection(("127.0.0.1", port), timeout=5)
print("loopback=" + cli.recv(100).decode(), flush=True)
target = "{target}"
if target:
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((target, 9))
        print("host_connect=ok")
    except OSError as e:
        print("host_connect=" + errno.errorcode.get(e.errno, str(e.errno)))
try:
    socket.getaddrinfo("example.com", 443)
    print("dns=ok")
except OSError as e:
    print("dns=failed")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.sendto(b"x", ("127.0.0.53", 53)); print("udp_loopback_send=ok")
except OSError as e:
    print("udp_loopback_send=" + errno.errorcode.get(e.errno, str(e.errno)))
"#
        ),
    );
    let r = env.run(&one_step("net", &run, ""));
    r.assert_code(0);
    assert_eq!(r.value("interfaces"), "lo");
    assert_eq!(r.value("loopback"), "hello from the job");
    assert_eq!(r.value("dns"), "failed");
    match host_addr {
        Some(_) => assert_eq!(r.value("host_connect"), "ENETUNREACH", "{r}"),
        None => eprintln!("SKIP part: this host has no non-loopback IPv4 address to try"),
    }
}

#[test]
fn a_step_past_its_timeout_is_killed() {
    let env = Env::new("timeout");
    let job = "version = 1\nname = \"slow\"\n[[steps]]\nname = \"sleepy\"\nrun = \"trap '' TERM; sleep 30\"\ntimeout = \"1s\"\n[[steps]]\nname = \"never\"\nrun = \"true\"\n";
    let t = Instant::now();
    let r = env.run(job);
    r.assert_code(1);
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    let res = r.result();
    assert_eq!(res["status"], "failed");
    assert_eq!(
        res["steps"].as_array().unwrap().len(),
        1,
        "later steps must not run\n{r}"
    );
    assert_eq!(res["steps"][0]["timed_out"], true);
    assert_eq!(res["steps"][0]["limit"], "timeout");
    assert_eq!(
        res["steps"][0]["signal"], 9,
        "TERM was ignored, so KILL ended it\n{r}"
    );
    assert!(
        res["reason"].as_str().unwrap().contains("time limit"),
        "{r}"
    );
}

/// What `bulwark probe` prints with `env`'s configuration.
fn probe_report(env: &Env) -> String {
    let probe = std::process::Command::new(bulwark_tests::bulwark_bin())
        .args(["probe", "--config"])
        .arg(&env.config)
        .output()
        .unwrap();
    String::from_utf8_lossy(&probe.stdout).into_owned()
}

/// Bytes available to unprivileged users, and the size, of the filesystem holding `dir`.
fn disk_space(dir: &std::path::Path) -> (u64, u64) {
    let st = nix::sys::statvfs::statvfs(dir).unwrap();
    (
        st.blocks_available() * st.fragment_size(),
        st.blocks() * st.fragment_size(),
    )
}

#[test]
fn a_job_is_refused_when_the_disk_is_already_below_the_reserve() {
    let env = Env::new("disk-low");
    fs::create_dir_all(&env.state).unwrap();
    let (_, total) = disk_space(&env.state);
    env.write_config(&format!("min_free_disk = \"{}B\"", total + 1));
    let r = env.run(&one_step("never", "echo ran", ""));
    r.assert_code(2);
    assert!(!r.log.contains("ran"), "{r}");
    assert!(
        r.stderr.contains("below limits.min_free_disk = ")
            && r.stderr
                .contains("free space there, or lower limits.min_free_disk"),
        "{r}"
    );
    // probe says so before any job is tried.
    let report = probe_report(&env);
    assert!(
        report.lines().any(|l| l.starts_with("disk")
            && l.contains("WARNING")
            && l.contains("below limits.min_free_disk")
            && l.ends_with("jobs are refused until there is more")),
        "{report}"
    );
}

/// A job that takes every permission from its own directories (`chmod 0`, `/workspace`
/// itself included) cannot keep its job directory on the host's disk: the runner gives them
/// back to remove them. Rootless (the runner's own uid owns them, and reading a directory
/// needs its permission) this left the tree for good, a disk a job could fill run by run; as
/// root, reading never needed it.
#[test]
fn a_job_directory_locked_by_the_job_is_removed() {
    let env = Env::new("locked");
    let run = "mkdir -p a/b/c /tmp/t/u && echo x > a/b/c/f && echo y > /tmp/t/u/f && \
               chmod 0 a/b/c a/b a /tmp/t/u /tmp/t /workspace && echo locked=yes";
    let r = env.run(&one_step("locked", run, ""));
    r.assert_code(0);
    assert_eq!(r.value("locked"), "yes", "{r}");
    assert!(!r.stderr.contains("removing job directory"), "{r}");
    assert_eq!(
        fs::read_dir(env.state.join("jobs")).unwrap().count(),
        0,
        "{r}"
    );
}

#[test]
fn a_double_forked_setsid_process_that_ignores_signals_is_gone_when_the_job_ends() {
    let env = Env::new("orphans");
    let marker = format!("31{}", rand_digits());
    let run = format!("setsid sh -c 'trap \"\" TERM HUP INT; sleep {marker}' > /dev/null 2>&1 < /dev/null &\nsleep 0.3\necho started");
    let r = env.run(&one_step("orphans", &run, ""));
    r.assert_code(0);
    assert_eq!(r.log.trim(), "started");
    assert!(
        processes_with(&format!("sleep {marker}")).is_empty(),
        "a job process survived the job"
    );
}

/// The end of a job's step that keeps the job running until the test has looked: it makes
/// `gate/running` in its workspace, then waits until the test makes `gate/go` there (for 60 s
/// at most). The gate directory is open to everyone, and the workspace passable, so that the
/// runner's user reaches it also where the job's uid is not the runner's (subuid mode). The
/// wait is a loop in the step's own shell, whose command line (the whole step) stays, so a
/// marker in a comment after it finds a process of the job while it waits.
const GATE: &str =
    "mkdir -p /workspace/gate && chmod 777 /workspace/gate && chmod 711 /workspace && \
     touch /workspace/gate/running && i=0 && \
     until test -e /workspace/gate/go || [ $i -ge 600 ]; do sleep 0.1; i=$((i+1)); done";

/// Waits up to `secs` seconds until `count` of `env`'s jobs wait at their [`GATE`]; their
/// workspaces as the host sees them.
fn gated(env: &Env, count: usize, secs: u64) -> Vec<std::path::PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let waiting: Vec<std::path::PathBuf> = fs::read_dir(env.state.join("jobs"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("workspace"))
            .filter(|w| w.join("gate").join("running").exists())
            .collect();
        if waiting.len() >= count {
            return waiting;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} jobs reached their gate within {secs} s",
            waiting.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Lets the jobs waiting at their [`GATE`] in `workspaces` end.
fn open_gates(workspaces: &[std::path::PathBuf]) {
    for w in workspaces {
        fs::write(w.join("gate").join("go"), "").unwrap();
    }
}

fn rand_digits() -> String {
    bulwark_tests::random_hex(4)
        .chars()
        .map(|c| char::from(b'0' + (c as u8 % 10)))
        .collect()
}

/// Runs a one-step job that makes `path` with `run` and declares it as an output; the job must
/// fail with `reason` and nothing may be stored.
fn assert_output_refused(tag: &str, run: &str, path: &str, reason: &str) {
    let env = Env::new(tag);
    let job = one_step(tag, run, &format!("[outputs]\npaths = [\"{path}\"]"));
    let r = env.run(&job);
    r.assert_code(1);
    let said = r.result()["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        said.contains(&format!("output {path}: refused: {reason}")),
        "{r}"
    );
    assert!(!r.out.join(path).exists(), "{r}");
    assert!(r.result()["outputs"].as_array().unwrap().is_empty(), "{r}");
}

#[test]
fn an_output_symlink_to_a_host_file_is_refused_without_reading_it() {
    assert_output_refused(
        "out-symlink",
        "ln -s /etc/shadow leak.txt",
        "leak.txt",
        "it is a symlink",
    );
}

#[test]
fn a_hard_linked_output_is_refused() {
    assert_output_refused(
        "out-hardlink",
        "echo data > a.txt && ln a.txt b.txt",
        "b.txt",
        "it has 2 hard links",
    );
}

#[test]
fn a_background_writer_cannot_change_an_output_after_the_main_process_exits() {
    let env = Env::new("out-writer");
    let run = "echo good > out.txt\nsetsid sh -c 'trap \"\" TERM; sleep 0.5; echo EVIL > out.txt; while true; do echo EVIL >> out.txt; done' > /dev/null 2>&1 &\nexit 0";
    let r = env.run(&one_step("writer", run, "[outputs]\npaths = [\"out.txt\"]"));
    r.assert_code(0);
    let stored = r.out.join("out.txt");
    assert_eq!(fs::read_to_string(&stored).unwrap(), "good\n");
    let digest = r.result()["outputs"][0]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(digest, sha256_file(&stored));
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        sha256_file(&stored),
        digest,
        "the stored output changed after the job ended"
    );
}

#[test]
fn a_source_holding_a_host_symlink_and_a_fifo_is_copied_without_reading_either() {
    let env = Env::new("source");
    env.write_src("README", "source file\n");
    symlink("/etc/shadow", env.src.join("shadow-link")).unwrap();
    nix::unistd::mkfifo(
        &env.src.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    // A reader of the fifo would block forever: the run finishing at all shows it was not opened.
    let run = "echo \"link=$(readlink shadow-link)\"; test -e fifo && echo fifo=present || echo fifo=absent\ncat shadow-link > /dev/null 2>&1 && echo shadow=readable || echo shadow=unreadable\necho \"readme=$(cat README)\"";
    let r = env.run(&one_step("source", run, ""));
    r.assert_code(0);
    assert_eq!(r.value("link"), "/etc/shadow");
    assert_eq!(r.value("fifo"), "absent");
    assert_eq!(r.value("shadow"), "unreadable");
    assert_eq!(r.value("readme"), "source file");
    assert!(r.stderr.contains("skipped 1 special file"), "{r}");
}

#[test]
fn many_special_files_in_a_source_are_named_briefly_and_without_their_control_characters() {
    let env = Env::new("source-fifos");
    env.write_src("README", "source file\n");
    for i in 0..25 {
        nix::unistd::mkfifo(
            &env.src.join(format!("fifo\x1b[31m{i:02}")),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
    }
    let r = env.run(&one_step("source", "true", ""));
    r.assert_code(0);
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("special file"))
        .unwrap_or_else(|| panic!("{r}"));
    assert!(
        line.contains("skipped 25 special file(s)") && line.ends_with(" and 5 more"),
        "{line}"
    );
    assert!(
        !line.contains('\x1b'),
        "a raw escape reached the terminal: {line:?}"
    );
    assert_eq!(line.matches("fifo\\u{1b}[31m").count(), 20, "{line}");
}

#[test]
fn a_spec_cannot_name_a_source_outside_its_own_directory() {
    let env = Env::new("source-escape");
    // A host file only the runner's user may read, outside the job file's directory.
    let host = env.dir.join("host");
    fs::create_dir_all(&host).unwrap();
    fs::write(host.join("secret"), "host-secret\n").unwrap();
    fs::set_permissions(
        host.join("secret"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let ci = env.dir.join("ci");
    fs::create_dir_all(ci.join("inside")).unwrap();
    fs::write(ci.join("inside/README"), "inside\n").unwrap();
    symlink(&host, ci.join("link")).unwrap();
    let spec = |path: &str| {
        format!(
            "version = 1\nname = \"escape\"\n[source]\npath = {path:?}\n[[steps]]\nname = \"read\"\n\
             run = \"echo secret=$(cat secret 2>/dev/null || echo none); echo readme=$(cat README 2>/dev/null || echo none)\"\n"
        )
    };
    for (n, path) in ["../host", host.to_str().unwrap(), "link", "/etc"]
        .into_iter()
        .enumerate()
    {
        let file = ci.join(format!("job{n}.toml"));
        fs::write(&file, spec(path)).unwrap();
        let r = env.run_spec(&file, &format!("out{n}"));
        r.assert_code(2);
        assert!(
            r.stderr.contains("outside the job file's directory"),
            "{path}: {r}"
        );
        assert!(r.result()["steps"].as_array().unwrap().is_empty(), "{r}");
        assert!(!r.stdout.contains("host-secret"), "{r}");
    }
    // A job file above the runner's own directories may not name them, nor a directory
    // holding them: here the state directory (keys) is env.dir/state.
    fs::create_dir_all(env.state.join("keys")).unwrap();
    fs::write(env.state.join("keys/marker"), "state-secret\n").unwrap();
    for (n, path) in ["state", "state/keys", "."].into_iter().enumerate() {
        let file = env.dir.join(format!("above{n}.toml"));
        fs::write(&file, spec(path)).unwrap();
        let r = env.run_spec(&file, &format!("out-above{n}"));
        r.assert_code(2);
        assert!(
            r.stderr.contains("which holds or lies in the runner's own"),
            "{path}: {r}"
        );
        assert!(!r.stdout.contains("state-secret"), "{r}");
    }
    // Nor a directory holding the signing key given with --key.
    fs::create_dir_all(ci.join("keys")).unwrap();
    let keygen = std::process::Command::new(bulwark_tests::bulwark_bin())
        .args(["keygen", "--out"])
        .arg(ci.join("keys"))
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let file = ci.join("with-key.toml");
    fs::write(&file, spec(".")).unwrap();
    let out = env.dir.join("out-with-key");
    let o = std::process::Command::new(bulwark_tests::bulwark_bin())
        .arg("run")
        .arg(&file)
        .arg("--config")
        .arg(&env.config)
        .arg("--out")
        .arg(&out)
        .arg("--key")
        .arg(ci.join("keys/signing.key"))
        .output()
        .unwrap();
    let r = bulwark_tests::Run::from_output(o, out);
    r.assert_code(2);
    assert!(
        r.stderr.contains("which holds or lies in the runner's own"),
        "{r}"
    );
    // A directory below the job file is fine (the operator's --source may be anywhere).
    let file = ci.join("inside.toml");
    fs::write(&file, spec("inside")).unwrap();
    let r = env.run_spec(&file, "out-inside");
    r.assert_code(0);
    assert_eq!(r.value("readme"), "inside");
}

/// Starts `job` in `env`, waits until `count` processes with `marker` in their command line
/// run, SIGKILLs the runner (which cleans nothing up itself) and waits until every one of
/// them is gone, as the parent-death signals must make them.
fn kill_runner_mid_job(env: &Env, job: &str, marker: &str, count: usize) {
    let (mut cmd, _out) = env.command(job, &[]);
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while processes_with(marker).len() < count {
        assert!(Instant::now() < deadline, "the job never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fs::read_dir(env.state.join("jobs")).unwrap().count(), 1);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    bulwark_tests::wait_for_no_process(marker, "job processes outlived the killed runner", 30);
}

#[test]
fn killing_bulwark_run_leaves_no_job_process_and_the_next_run_cleans_up() {
    let env = Env::new("sigkill");
    let marker = format!("29{}", rand_digits());
    let job = one_step(
        "victim",
        &format!("setsid sleep {marker}1 & sleep {marker}"),
        "",
    );
    kill_runner_mid_job(&env, &job, &format!("sleep {marker}"), 2);
    let jobs_dir = env.state.join("jobs");
    // The dead run's directory is still there; the next run removes it (and its cgroups).
    assert_eq!(fs::read_dir(&jobs_dir).unwrap().count(), 1);
    let stale: Vec<String> = fs::read_dir(&jobs_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let r = env.run(&one_step("next", "true", ""));
    r.assert_code(0);
    assert!(r.stderr.contains("cleaned up after 1 dead run"), "{r}");
    assert_eq!(
        fs::read_dir(&jobs_dir).unwrap().count(),
        0,
        "job directories left behind"
    );
    // Where the job cgroups were: v1 hierarchies, or the cgroup v2 root (as root).
    for id in stale {
        for ctrl in ["memory", "pids", "freezer", ""] {
            let p = std::path::Path::new("/sys/fs/cgroup")
                .join(ctrl)
                .join("bulwark")
                .join(&id);
            assert!(!p.exists(), "cgroup {} left behind", p.display());
        }
    }
}

#[test]
fn the_hello_example_succeeds_and_its_digests_match_the_files() {
    let env = Env::new("hello");
    let out = env.dir.join("hello-out");
    let job = bulwark_tests::repo_root().join("examples/hello/job.toml");
    let o = std::process::Command::new(bulwark_tests::bulwark_bin())
        .args(["run", "--quiet", "--config"])
        .arg(&env.config)
        .arg(&job)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let r = bulwark_tests::Run::from_output(o, out.clone());
    r.assert_code(0);
    let outputs = r.result()["outputs"].as_array().unwrap().clone();
    assert!(!outputs.is_empty(), "{r}");
    for o in outputs {
        let p = out.join(o["path"].as_str().unwrap());
        assert_eq!(o["sha256"].as_str().unwrap(), sha256_file(&p));
        assert_eq!(o["size"].as_u64().unwrap(), fs::metadata(&p).unwrap().len());
    }
}

/// Pids whose parent is `parent`, from `/proc/<pid>/stat`.
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name, which is in parentheses and may hold spaces.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// The sandbox helper (which parses the spec, a trusted job's credentials with it) and init
/// (which writes them) are not dumpable while the job runs: their `/proc/<pid>/mem` belongs
/// to root (the directory keeps its owner either way), so another process of their uid (the
/// job's in root mode, the runner's user rootless) cannot read their memory, and a crash of
/// either leaves no core dump.
#[test]
fn the_sandbox_helper_and_init_are_not_dumpable_while_the_job_runs() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new("dumpable");
    let started = env.start(&one_step("dumpable", "sleep 1; echo STEP-RAN; sleep 4", ""));
    let runner = started.pid();
    // The helper is the run's child; init the helper's; the step init's, once init is past
    // its own setup (which marks it non-dumpable).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (helper, init) = loop {
        let found = children_of(runner).into_iter().find_map(|h| {
            let comm = fs::read_to_string(format!("/proc/{h}/comm")).ok()?;
            if comm.trim() != "bulwark-sandbox" {
                return None;
            }
            let init = *children_of(h).first()?;
            children_of(init).first()?;
            Some((h, init))
        });
        if let Some(f) = found {
            break f;
        }
        assert!(Instant::now() < deadline, "no running job found");
        std::thread::sleep(Duration::from_millis(20));
    };
    let am_root = nix::unistd::geteuid().is_root();
    for (what, pid) in [("helper", helper), ("init", init)] {
        let proc_dir = format!("/proc/{pid}");
        let mem = format!("{proc_dir}/mem");
        let owner = fs::metadata(&mem).unwrap().uid();
        assert_eq!(owner, 0, "{what} is dumpable: {mem} belongs to uid {owner}");
        // The attempt: a process of the same uid reads its memory.
        let status = fs::read_to_string(format!("{proc_dir}/status")).unwrap();
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .unwrap()
            .to_owned();
        if am_root {
            let o = std::process::Command::new("setpriv")
                .args(["--reuid", &uid, "--regid", &uid, "--clear-groups", "--"])
                .args(["cat", &mem])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success(), "{what}'s memory read as uid {uid}");
            assert!(err.contains("Permission denied"), "{what}: {err}");
        } else {
            assert_eq!(uid, nix::unistd::geteuid().to_string(), "{status}");
            let e = fs::File::open(&mem).unwrap_err();
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied,
                "{what}'s memory opened by its own uid: {e}"
            );
        }
    }
    let r = started.finish();
    r.assert_code(0);
    assert!(r.log.contains("STEP-RAN"), "{r}");
}

/// Tests that need root: per-job host uids and cgroup limits.
mod root_mode {
    use super::*;

    fn require_root() {
        assert!(
            bulwark_tests::is_root(),
            "root_mode tests need root; the rootless pass skips them with --skip root_mode::"
        );
    }

    #[test]
    fn a_job_cgroup_that_cannot_be_removed_keeps_its_directory_for_the_next_run_to_clean() {
        require_root();
        let env = Env::new("cg-stuck");
        // The job runs until the test has made its cgroups unremovable.
        let started = env.start(&one_step("stuck", GATE, ""));
        let gate = gated(&env, 1, 60);
        let jobs_dir = env.state.join("jobs");
        let id = fs::read_dir(&jobs_dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .file_name();
        // The job's cgroups: `bulwark/<id>` under each v1 hierarchy, or under the v2 root;
        // in a delegated v2 cgroup, the `cgroups` record in the job directory names it.
        let root = std::path::Path::new("/sys/fs/cgroup");
        let cgroups: Vec<std::path::PathBuf> = fs::read_dir(root)
            .unwrap()
            .flatten()
            .map(|h| h.path())
            .chain([root.to_path_buf()])
            .map(|h| h.join("bulwark").join(&id))
            .chain(
                fs::read_to_string(jobs_dir.join(&id).join("cgroups"))
                    .unwrap_or_default()
                    .lines()
                    .map(std::path::PathBuf::from),
            )
            .filter(|d| d.is_dir())
            .collect();
        assert!(!cgroups.is_empty(), "no cgroup of job {id:?} found");
        // Root makes a child cgroup in each: the runner cannot remove the job's cgroups (the
        // kernel refuses to remove a cgroup that has children, as it refuses one whose
        // processes cannot be killed), and nothing the job could do is involved.
        for cg in &cgroups {
            fs::create_dir(cg.join("held")).unwrap();
        }
        open_gates(&gate);
        let r = started.finish();
        r.assert_code(3);
        assert!(r.stderr.contains("could not be emptied"), "{r}");
        // The job directory, which names the cgroups, is still there.
        assert!(jobs_dir.join(&id).is_dir(), "{r}");
        assert!(cgroups.iter().all(|cg| cg.is_dir()));
        // A next run's cleanup cannot remove them either: it leaves the directory again (and
        // its own job runs).
        let r = env.run(&one_step("meanwhile", "true", ""));
        r.assert_code(0);
        assert!(
            r.stderr.contains("left the directory of dead run")
                && r.stderr.contains("could not be emptied"),
            "{r}"
        );
        assert!(jobs_dir.join(&id).is_dir(), "{r}");
        for cg in &cgroups {
            fs::remove_dir(cg.join("held")).unwrap();
        }
        // Now that they can be emptied, the next run removes both.
        let r = env.run(&one_step("next", "true", ""));
        r.assert_code(0);
        assert!(r.stderr.contains("cleaned up after 1 dead run"), "{r}");
        assert!(!jobs_dir.join(&id).exists());
        for cg in &cgroups {
            assert!(!cg.exists(), "{} is left", cg.display());
        }
    }

    /// Unmounts on drop, so the test's directory can be removed even when an assert failed.
    struct Mounted(std::path::PathBuf);
    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    /// All of `env`'s directory (configuration, state, outputs) on a tmpfs of its own of
    /// `size`, with `limits_extra` in the configuration: the disk-reserve tests measure free
    /// space, which nothing else on the host may change under them.
    fn on_private_fs(env: &Env, size: &str, limits_extra: &str) -> Mounted {
        require_root();
        let mounted = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&env.dir)
            .status()
            .unwrap();
        assert!(mounted.success(), "mount a tmpfs on {}", env.dir.display());
        let guard = Mounted(env.dir.clone());
        fs::create_dir_all(&env.src).unwrap();
        fs::create_dir_all(&env.state).unwrap();
        env.write_config(limits_extra);
        guard
    }

    #[test]
    fn a_job_that_fills_the_disk_is_stopped_at_the_reserve_and_its_files_removed() {
        let env = Env::new("disk-fill");
        // 768 MiB, of which 512 MiB must stay available: the job crosses the reserve after
        // about 256 MiB of the 4 GiB it tries to write (or runs out of space), then sleeps.
        let _fs = on_private_fs(&env, "768m", "min_free_disk = \"512MiB\"");
        let (before, _) = disk_space(&env.state);
        let marker = format!("29{}", rand_digits());
        let run = format!(
            "head -c 4294967296 /dev/zero > /workspace/fill && echo wrote-all; sleep {marker}"
        );
        let r = env.run(&one_step("fill", &run, "[resources]\ntimeout = \"30s\"\n"));
        // The disk is full for every job on it, whichever filled it: the runner's failure
        // (DESIGN.md: exit 3, "disk full"), not this job's.
        r.assert_code(3);
        let res = r.result();
        assert_eq!(res["status"], "runner-error", "{r}");
        let reason = res["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("the filesystem of ")
                && reason.contains(
                    "below limits.min_free_disk = 512MiB, while the job ran: the runner stopped it"
                ),
            "{r}"
        );
        assert!(
            !r.log.contains("wrote-all"),
            "the job wrote everything\n{r}"
        );
        assert!(
            res["isolation"]["limits_enforced"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l == "free-disk"),
            "{r}"
        );
        // The host afterwards: no job process, no job directory, the space back.
        assert!(processes_with(&format!("sleep {marker}")).is_empty());
        let jobs: Vec<_> = fs::read_dir(env.state.join("jobs")).unwrap().collect();
        assert!(jobs.is_empty(), "job directories left: {jobs:?}");
        let (after, _) = disk_space(&env.state);
        assert!(
            after + (1 << 20) > before,
            "space not given back: {before} available before, {after} after"
        );
    }

    #[test]
    fn a_job_on_its_own_disk_is_not_stopped_when_another_job_fills_the_host() {
        let env = Env::new("disk-own");
        // As above: 768 MiB, 512 MiB kept. A job with a 64 MiB disk of its own runs while a
        // job without one crosses the reserve: only the one that filled the host is stopped.
        let _fs = on_private_fs(&env, "768m", "min_free_disk = \"512MiB\"");
        // A unique sleep of about 4 s, long enough for the other job to fill the host.
        let pause = format!("4.{}", rand_digits());
        let own = env.start(&one_step(
            "own",
            &format!("sleep {pause}; echo own-done"),
            "[resources]\ndisk = \"64MiB\"",
        ));
        bulwark_tests::wait_for_process(&format!("sleep {pause}"), "the disk job", 20);
        let r = env.run(&one_step(
            "fill",
            "head -c 4294967296 /dev/zero > /workspace/fill; sleep 30",
            "[resources]\ntimeout = \"30s\"\n",
        ));
        r.assert_code(3);
        assert!(
            r.result()["reason"]
                .as_str()
                .unwrap()
                .contains("below limits.min_free_disk = 512MiB, while the job ran"),
            "{r}"
        );
        let own = own.finish();
        own.assert_code(0);
        assert!(own.log.contains("own-done"), "{own}");
    }

    #[test]
    fn outputs_that_would_cross_the_reserve_are_not_copied() {
        let env = Env::new("disk-out");
        // 1 GiB, 640 MiB of it kept: the job's own 256 MiB leave 768 MiB; the copy of them as
        // an output would leave 512 MiB.
        let _fs = on_private_fs(&env, "1g", "min_free_disk = \"640MiB\"");
        let r = env.run(&one_step(
            "out",
            "head -c 268435456 /dev/zero > big.bin",
            "[outputs]\npaths = [\"big.bin\"]\n",
        ));
        r.assert_code(1);
        let res = r.result();
        let reason = res["reason"].as_str().unwrap();
        assert!(
            reason.contains("writing 256MiB to ")
                && reason.contains("would leave less than limits.min_free_disk"),
            "{r}"
        );
        assert!(!r.out.join("big.bin").exists(), "{r}");
    }

    /// Pids of `root` and every process descended from it.
    fn descendants(root: i32) -> Vec<i32> {
        let parent = |pid: i32| -> Option<i32> {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            stat.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        };
        let all: Vec<i32> = fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
            .collect();
        let mut found = vec![root];
        loop {
            let more: Vec<i32> = all
                .iter()
                .copied()
                .filter(|p| !found.contains(p) && parent(*p).is_some_and(|pp| found.contains(&pp)))
                .collect();
            if more.is_empty() {
                return found;
            }
            found.extend(more);
        }
    }

    #[test]
    fn isolation_modes_for_an_ordinary_user_are_refused_as_root() {
        // As root every job gets its own uid; a configuration asking for a mode meant for an
        // ordinary user is a mistake to report, not to run with.
        require_root();
        let env = Env::new("iso-root");
        for mode in ["subuid", "rootless-single-uid"] {
            env.write_config(&format!("isolation = \"{mode}\""));
            let r = env.run(&one_step("refused", "echo ran", ""));
            r.assert_code(2);
            assert!(
                r.stderr.contains(&format!(
                    "limits.isolation = \"{mode}\" is for a runner that is not root"
                )),
                "{r}"
            );
            assert!(!r.stdout.contains("ran"), "{r}");
        }
    }

    #[test]
    fn descriptors_the_runner_inherits_reach_neither_the_helper_nor_init() {
        // Whatever starts `bulwark run` may leave descriptors open without close-on-exec (a
        // CI agent's log pipe, a directory); the runner passes them on when it starts the
        // helper. A directory descriptor in init would be a ready-made way out of its root.
        require_root();
        let env = Env::new("inherited-fds");
        let marker = env.dir.join("inherited-marker");
        fs::write(&marker, "x").unwrap();
        let pause = format!("2.{}", rand_digits());
        let (cmd, _out) = env.command(&one_step("fds", &format!("sleep {pause}"), ""), &[]);
        // fd 7 opened by a shell without close-on-exec, then the runner exec'd in its place.
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg("exec 7<\"$0\"; exec \"$@\"")
            .arg(&marker)
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let runner = child.id() as i32;
        bulwark_tests::wait_for_process(&format!("sleep {pause}"), "the job", 20);
        let holds_marker = |pid: i32| -> bool {
            fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|d| {
                    d.flatten()
                        .any(|e| fs::read_link(e.path()).is_ok_and(|t| t == marker))
                })
                .unwrap_or(false)
        };
        let family = descendants(runner);
        let sandbox: Vec<i32> = family
            .iter()
            .copied()
            .filter(|p| {
                fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "bulwark-sandbox")
            })
            .collect();
        let leaked: Vec<i32> = family[1..]
            .iter()
            .copied()
            .filter(|p| holds_marker(*p))
            .collect();
        // The setup worked (the runner holds it), and both helper and init were looked at.
        let runner_holds = holds_marker(runner);
        let _ = child.wait();
        assert!(
            runner_holds,
            "the runner did not inherit fd 7: the test proves nothing"
        );
        assert!(
            sandbox.len() >= 2,
            "expected the helper and init among {family:?}, found {sandbox:?}"
        );
        assert!(
            leaked.is_empty(),
            "processes {leaked:?} of the sandbox hold the inherited descriptor"
        );
    }

    #[test]
    fn a_state_directory_on_a_noexec_mount_is_reported_by_probe_and_run() {
        // Workspaces live under the state directory, and a bind mount keeps its source's
        // noexec: jobs could run nothing they build. Both commands must say so, not leave
        // the operator with a bare "Permission denied" from the job.
        require_root();
        let env = Env::new("noexec");
        fs::create_dir_all(&env.state).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "noexec,size=64m", "tmpfs"])
            .arg(&env.state)
            .status()
            .unwrap();
        assert!(mounted.success(), "mount a noexec tmpfs");
        let _guard = Mounted(env.state.clone());
        let report = probe_report(&env);
        assert!(
            report.lines().any(|l| l.starts_with("state-dir")
                && l.contains("WARNING")
                && l.contains("noexec")),
            "{report}"
        );
        let r = env.run(&one_step("noexec", "cp /bin/true ./t && ./t", ""));
        assert_ne!(r.code, 0, "{r}");
        assert!(r.stderr.contains("noexec mount"), "{r}");
    }

    #[test]
    fn a_fork_bomb_stops_at_the_pids_limit() {
        require_root();
        let env = Env::new("forkbomb");
        let run = py(&env, "bomb.py", FORK_BOMB);
        let r = env.run(&one_step("bomb", &run, "[resources]\npids = 64"));
        assert_stopped_by_the_pids_limit(&r);
        // The runner stayed responsive and cleaned up: no bomb child survives.
        assert!(processes_with("bomb.py").is_empty());
    }

    #[test]
    fn a_memory_bomb_is_oom_killed_inside_the_jobs_cgroup() {
        require_root();
        let env = Env::new("membomb");
        let run = MEMORY_BOMB;
        let r = env.run(&one_step("membomb", run, "[resources]\nmemory = \"64MiB\""));
        assert_oom_killed_in_the_jobs_cgroup(&r);
        let res = r.result();
        assert!(
            res["reason"]
                .as_str()
                .unwrap()
                .contains("memory limit of 64MiB"),
            "{r}"
        );
        assert!(!r.log.contains("allocated"));
    }

    /// Memory held in `/dev/shm` (tmpfs) is charged to the job's cgroup but belongs to no
    /// process, so at the limit the kernel picks by score: the job's processes are raised
    /// above the sandbox's own (`oom_score_adj` 500, what the job sees), so the step is
    /// killed and reported at its memory limit, not the sandbox (which left the run a runner
    /// error without any step record).
    #[test]
    fn memory_held_in_tmpfs_ends_the_step_at_its_limit_not_the_sandbox() {
        require_root();
        let env = Env::new("shmbomb");
        let run = "echo \"adj=$(cat /proc/self/oom_score_adj)\"\n\
                   (echo 0 > /proc/self/oom_score_adj) 2>/dev/null && echo lowered=yes || \
                   echo lowered=no\n\
                   head -c 200M /dev/zero > /dev/shm/fill\n\
                   echo allocated";
        let r = env.run(&one_step("shmbomb", run, "[resources]\nmemory = \"64MiB\""));
        assert_oom_killed_in_the_jobs_cgroup(&r);
        assert_eq!(r.value("adj"), "500", "{r}");
        // Nor can the job lower it again (Landlock refuses the write).
        assert_eq!(r.value("lowered"), "no", "{r}");
        let res = r.result();
        assert_eq!(res["steps"][0]["name"], "main", "{r}");
        assert!(
            res["reason"]
                .as_str()
                .unwrap()
                .contains("memory limit of 64MiB"),
            "{r}"
        );
    }

    /// A step that lost a process to the memory limit and went on is not what a later step's
    /// failure is blamed on: that one failed on its own (exit 3), and says so.
    #[test]
    fn a_later_steps_failure_is_not_blamed_on_an_earlier_steps_oom_kill() {
        require_root();
        let env = Env::new("oomearlier");
        let bomb = MEMORY_BOMB.trim_start_matches("exec ");
        let job = format!(
            "version = 1\nname = \"oomearlier\"\n[resources]\nmemory = \"64MiB\"\n\
             [[steps]]\nname = \"one\"\nrun = '''\n{bomb}\necho survived=yes\n'''\n\
             [[steps]]\nname = \"two\"\nrun = \"exit 3\"\n"
        );
        let r = env.run(&job);
        r.assert_code(1);
        assert_eq!(r.value("survived"), "yes", "{r}");
        let res = r.result();
        assert!(
            res["cgroup_counters"]["oom_kills"].as_u64().unwrap() >= 1,
            "{r}"
        );
        assert_eq!(res["steps"][1]["exit_code"], 3, "{r}");
        assert!(
            res["steps"][1].get("limit").is_none_or(|l| l.is_null()),
            "{r}"
        );
        assert_eq!(res["reason"], "step two exited with status 3", "{r}");
    }

    /// Loopback connections whose reader stops reading, after reading long enough for the
    /// kernel to grow their buffers: 64 of them queue about 260 MiB on this host without a
    /// limit. The job's sockets are charged to its cgroup (v1: a TCP limit of its memory
    /// limit), so its writes stop near 64 MiB.
    #[test]
    fn a_job_cannot_fill_kernel_socket_buffers_past_its_limit() {
        require_root();
        let env = Env::new("sockmem");
        // exec: the kill is the step's own, as the OOM check below expects.
        let run = format!("exec {}", py(&env, "fill.py", SOCKET_FILL));
        let r = env.run(&one_step(
            "sockmem",
            &run,
            "[resources]\nmemory = \"64MiB\"",
        ));
        // cgroup v2 (the VM pass) counts socket buffers in `memory.max` with the job's other
        // memory: the job may be OOM-killed inside its own cgroup before its writes stop.
        if r.result()["isolation"]["cgroup"] == "v2" && r.code == 1 {
            assert_oom_killed_in_the_jobs_cgroup(&r);
            return;
        }
        r.assert_code(0);
        if r.result()["isolation"]["cgroup"] == "v1"
            && !std::path::Path::new("/sys/fs/cgroup/memory/memory.kmem.tcp.limit_in_bytes")
                .exists()
        {
            eprintln!("SKIPPED: this v1 kernel has no memory.kmem.tcp.limit_in_bytes");
            return;
        }
        let queued: u64 = r.value("queued_mib").parse().unwrap();
        assert!(
            queued < 96,
            "the job queued {queued} MiB in socket buffers under a 64 MiB limit\n{r}"
        );
        // Writes stopped because the buffers were full, not because the job ran out.
        assert!(queued >= 16, "{r}");
    }

    #[test]
    fn a_cpu_limit_holds_a_busy_job_to_its_share_and_is_recorded() {
        require_root();
        let env = Env::new("cpu");
        let r = env.run(&one_step("cpuhog", CPU_HOG, "[resources]\ncpus = 0.2"));
        r.assert_code(0);
        let cpu: f64 = r.value("cpu").parse().unwrap();
        let wall: f64 = r.value("wall").parse().unwrap();
        // Two spinning processes would take ~2 CPUs here unlimited; held to 0.2 CPU they get
        // about 0.3 s in 1.5 s. The bound leaves room for a period's slack and a busy host.
        assert!(wall >= 1.5, "{r}");
        assert!(
            cpu / wall < 0.45,
            "the job used {cpu} s of CPU in {wall} s under a 0.2 CPU limit\n{r}"
        );
        let res = r.result();
        let enforced = res["isolation"]["limits_enforced"].to_string();
        assert!(enforced.contains("\"cpu\""), "{r}");
        let counters = &res["cgroup_counters"];
        assert!(
            counters["cpu_throttled_periods"].as_u64().unwrap() > 0
                && counters["cpu_throttled_ms"].as_u64().unwrap() > 0,
            "{r}"
        );
        assert!(
            r.stderr
                .contains("the job's CPU limit of 0.2 held it back for"),
            "{r}"
        );
    }

    #[test]
    fn the_operators_cpu_ceiling_limits_a_job_that_asks_for_nothing_and_refuses_more() {
        require_root();
        let env = Env::new("cpu-ceiling");
        env.write_config("max_cpus = 0.25");
        let r = env.run(&one_step("cpudefault", CPU_HOG, ""));
        r.assert_code(0);
        let cpu: f64 = r.value("cpu").parse().unwrap();
        let wall: f64 = r.value("wall").parse().unwrap();
        assert!(
            cpu / wall < 0.5,
            "{cpu} s of CPU in {wall} s under 0.25\n{r}"
        );
        assert!(r.result()["isolation"]["limits_enforced"]
            .to_string()
            .contains("\"cpu\""));
        let r = env.run(&one_step("cpumore", "echo ran", "[resources]\ncpus = 1"));
        r.assert_code(2);
        assert!(
            r.stderr.contains(
                "resources.cpus: 1 is above the operator's ceiling of 0.25 (limits.max_cpus)"
            ),
            "{r}"
        );
        assert!(!r.log.contains("ran"), "{r}");
    }

    /// Mounts (from this process's mountinfo) and loop devices (their backing files) that
    /// lie under `dir`: what a job disk would leave on the host.
    fn disk_leftovers(dir: &std::path::Path) -> Vec<String> {
        let dir = dir.to_string_lossy().into_owned();
        let mut left: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&dir)))
            .map(|l| format!("mount {l}"))
            .collect();
        for e in fs::read_dir("/sys/block").unwrap().flatten() {
            let backing = e.path().join("loop/backing_file");
            if let Ok(f) = fs::read_to_string(&backing) {
                if f.starts_with(&dir) {
                    left.push(format!("{}: {}", e.file_name().to_string_lossy(), f.trim()));
                }
            }
        }
        left
    }

    #[test]
    fn a_job_disk_stops_the_jobs_writes_at_its_size_and_leaves_nothing_on_the_host() {
        require_root();
        let env = Env::new("disk");
        // The host's filesystem has far more room than the disk: the bound the job meets is
        // its disk's, not the host's.
        let host = nix::sys::statvfs::statvfs(&env.dir).unwrap();
        assert!(host.blocks_available() * host.fragment_size() > 256 << 20);
        let run = "df -k /workspace | awk 'NR==2 {print \"size_kib=\" $2}'; \
                   dd if=/dev/zero of=/workspace/big bs=1M count=48 2>&1 | grep -o 'No space left on device' | sed 's/^/dd=/'; \
                   fallocate -l 256M /tmp/huge 2>&1 | grep -o 'No space left on device' | sed 's/^/fallocate=/'; \
                   exit 7";
        let r = env.run(&one_step("fill", run, "[resources]\ndisk = \"32MiB\""));
        r.assert_code(1);
        // The job met ENOSPC, for /workspace and /tmp alike (one disk), at its size.
        assert_eq!(r.value("dd"), "No space left on device", "{r}");
        assert_eq!(r.value("fallocate"), "No space left on device", "{r}");
        let size_kib: u64 = r.value("size_kib").parse().unwrap();
        assert!((20 << 10..=32 << 10).contains(&size_kib), "{r}");
        let res = r.result();
        assert_eq!(res["steps"][0]["limit"], "disk", "{r}");
        assert!(
            res["reason"]
                .as_str()
                .unwrap()
                .ends_with("exited with status 7 after filling its disk of 32MiB (resources.disk)"),
            "{r}"
        );
        assert!(res["isolation"]["limits_enforced"]
            .to_string()
            .contains("\"disk\""));
        assert_eq!(res["disk"]["size"], 32 << 20, "{r}");
        assert!(res["disk"]["used"].as_u64().unwrap() > 20 << 20, "{r}");
        // The host: no mount, no loop device, no job directory left.
        assert_eq!(disk_leftovers(&env.dir), Vec::<String>::new());
        assert_eq!(fs::read_dir(env.state.join("jobs")).unwrap().count(), 0);

        // Within its size a job works as usual, and its outputs are collected from its disk.
        env.write_config("max_disk = \"16MiB\"");
        let r = env.run(&one_step(
            "small",
            "df -k /workspace | awk 'NR==2 {print \"size_kib=\" $2}'; echo made > out.txt",
            "[outputs]\npaths = [\"out.txt\"]",
        ));
        r.assert_code(0);
        // No `disk` in the spec: the operator's max_disk is every job's disk.
        let size_kib: u64 = r.value("size_kib").parse().unwrap();
        assert!((8 << 10..=16 << 10).contains(&size_kib), "{r}");
        assert_eq!(fs::read_to_string(r.out.join("out.txt")).unwrap(), "made\n");
        assert_eq!(r.result()["disk"]["size"], 16 << 20, "{r}");
        let r = env.run(&one_step(
            "more",
            "echo ran",
            "[resources]\ndisk = \"1GiB\"",
        ));
        r.assert_code(2);
        assert!(
            r.stderr.contains(
                "resources.disk: 1GiB is above the operator's ceiling of 16MiB (limits.max_disk)"
            ),
            "{r}"
        );
        assert_eq!(disk_leftovers(&env.dir), Vec::<String>::new());
    }

    #[test]
    fn a_job_that_runs_its_disk_out_of_files_is_told_so() {
        // A small disk holds a few thousand files (ext4 gives 16MiB 4096 inodes): a build
        // with many small files meets ENOSPC with most of the bytes still free.
        require_root();
        let env = Env::new("disk-inodes");
        let run = "mkdir many; i=0; while touch many/$i 2>/dev/null; do i=$((i+1)); done; \
                   echo files=$i; exit 3";
        let r = env.run(&one_step("files", run, "[resources]\ndisk = \"16MiB\""));
        r.assert_code(1);
        let files: u64 = r.value("files").parse().unwrap();
        assert!(files > 1000 && files < 4096, "{r}");
        let res = r.result();
        assert!(res["disk"]["used"].as_u64().unwrap() < 8 << 20, "{r}");
        assert_eq!(res["steps"][0]["limit"], "disk", "{r}");
        assert!(
            res["reason"].as_str().unwrap().ends_with(
                "exited with status 3 after using up the files its disk of 16MiB can hold \
                 (4096; resources.disk)"
            ),
            "{r}"
        );
        assert_eq!(disk_leftovers(&env.dir), Vec::<String>::new());
    }

    #[test]
    fn a_job_disk_is_refused_where_the_runner_cannot_mount_one() {
        // Root, but in a user namespace (a container), or without CAP_SYS_ADMIN (a systemd
        // unit's bounding set): the job is refused before anything runs, saying why, and the
        // host keeps no image, mount or loop device.
        require_root();
        let env = Env::new("disk-nocap");
        let job = one_step("disk", "echo ran", "[resources]\ndisk = \"16MiB\"");
        for (wrapper, why) in [
            (
                vec!["unshare", "--user", "--map-root-user"],
                "the runner runs in a user namespace",
            ),
            (
                vec![
                    "setpriv",
                    "--inh-caps=-sys_admin",
                    "--bounding-set=-sys_admin",
                ],
                "the runner lacks CAP_SYS_ADMIN",
            ),
        ] {
            let (cmd, out) = env.command(&job, &[]);
            let o = std::process::Command::new(wrapper[0])
                .args(&wrapper[1..])
                .arg(cmd.get_program())
                .args(cmd.get_args())
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            let r = bulwark_tests::Run::from_output(o, out);
            r.assert_code(2);
            assert!(
                r.stderr.contains("cannot give the job its disk of 16MiB")
                    && r.stderr.contains(why),
                "{r}"
            );
            assert!(!r.log.contains("ran"), "{r}");
            assert_eq!(disk_leftovers(&env.dir), Vec::<String>::new());
            let jobs = fs::read_dir(env.state.join("jobs"))
                .map(|d| d.count())
                .unwrap_or(0);
            assert_eq!(jobs, 0, "{r}");
        }
    }

    #[test]
    fn a_source_larger_than_the_job_disk_refuses_the_job() {
        require_root();
        let env = Env::new("disk-src");
        let noise: String = "0123456789abcdef".repeat(1 << 16); // 1 MiB
        for i in 0..20 {
            env.write_src(&format!("blob{i}"), &noise);
        }
        let r = env.run(&one_step(
            "big",
            "echo ran",
            "[resources]\ndisk = \"16MiB\"",
        ));
        r.assert_code(2);
        assert!(
            r.stderr.contains(
                "No space left on device (os error 28): the source does not fit on the job's \
                 disk of 16MiB (resources.disk)"
            ),
            "{r}"
        );
        assert!(!r.log.contains("ran"), "{r}");
        assert_eq!(disk_leftovers(&env.dir), Vec::<String>::new());
        assert_eq!(fs::read_dir(env.state.join("jobs")).unwrap().count(), 0);
    }

    #[test]
    fn job_disks_are_checked_against_the_reserve_and_made_one_at_a_time() {
        // While another run holds the reservation lock (making its disk), a job with a disk
        // waits: the check that its disk fits and its preallocation are one step.
        require_root();
        let env = Env::new("disk-lock");
        fs::create_dir_all(&env.state).unwrap();
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(env.state.join(".disk-reservations"))
            .unwrap();
        let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
        let pause = format!("3.{}", rand_digits());
        let started = env.start(&one_step(
            "waits",
            &format!("sleep {pause}; echo ran"),
            "[resources]\ndisk = \"16MiB\"",
        ));
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            processes_with(&format!("sleep {pause}")).is_empty(),
            "the job started while the reservation lock was held"
        );
        assert!(disk_leftovers(&env.dir).is_empty());
        drop(held);
        let r = started.finish();
        r.assert_code(0);
        assert!(r.log.contains("ran"), "{r}");
    }

    #[test]
    fn bulwark_exec_checks_its_disk_against_the_reserve_under_the_reservation_lock() {
        // `exec` makes a disk of `limits.max_disk` as `run` does, so it takes the same lock
        // and meets the same reserve: 768 MiB, 512 MiB kept, a 384 MiB disk does not fit.
        let env = Env::new("exec-disk");
        let _fs = on_private_fs(
            &env,
            "768m",
            "min_free_disk = \"512MiB\"\nmax_disk = \"384MiB\"",
        );
        let out = std::process::Command::new(bulwark_tests::bulwark_bin())
            .args(["exec", "--config"])
            .arg(&env.config)
            .args(["--", "/bin/sh", "-c", "echo ran"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(!stderr.contains("ran"), "{stderr}");
        assert!(stderr.contains("does not fit"), "{stderr}");
        assert!(env.state.join(".disk-reservations").exists(), "{stderr}");
        assert_eq!(disk_leftovers(&env.state), Vec::<String>::new());
        assert_eq!(fs::read_dir(env.state.join("jobs")).unwrap().count(), 0);
    }

    #[test]
    fn a_killed_run_s_cpu_cgroup_and_disk_are_removed_by_the_next_run() {
        require_root();
        let env = Env::new("cpu-kill");
        let marker = format!("32{}", rand_digits());
        let job = one_step(
            "victim",
            &format!("sleep {marker}"),
            "[resources]\ncpus = 0.5\ndisk = \"16MiB\"",
        );
        kill_runner_mid_job(&env, &job, &format!("sleep {marker}"), 1);
        let jobs_dir = env.state.join("jobs");
        let id = fs::read_dir(&jobs_dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .file_name()
            .into_string()
            .unwrap();
        // Where the job's cpu cgroup is: the v1 cpu hierarchy (`cpu` or `cpu,cpuacct`), or
        // the v2 root.
        let cgroups: Vec<std::path::PathBuf> = ["cpu", "cpu,cpuacct", "memory", ""]
            .iter()
            .map(|c| {
                std::path::Path::new("/sys/fs/cgroup")
                    .join(c)
                    .join("bulwark")
                    .join(&id)
            })
            .filter(|p| p.exists())
            .collect();
        assert!(!cgroups.is_empty(), "no cgroup of {id} found");
        // The dead run's disk is still mounted (nothing ran to unmount it)...
        let left = disk_leftovers(&env.dir);
        assert!(left.iter().any(|l| l.starts_with("mount")), "{left:?}");
        // ...until the next run cleans up after it, with its cgroups.
        let r = env.run(&one_step("next", "true", ""));
        r.assert_code(0);
        assert!(r.stderr.contains("cleaned up after 1 dead run"), "{r}");
        for p in cgroups {
            assert!(!p.exists(), "cgroup {} left behind", p.display());
        }
        assert_eq!(disk_leftovers(&env.dir), Vec::<String>::new());
        assert_eq!(fs::read_dir(&jobs_dir).unwrap().count(), 0);
    }

    #[test]
    fn runners_with_different_runtime_directories_never_share_a_root_job_uid() {
        // Two pools on one host, each with its configuration and runtime directory, and the
        // same one-uid range: while a job of the first runs, the second has no uid to give.
        require_root();
        let (a, b) = (Env::new("pool-a"), Env::new("pool-b"));
        for env in [&a, &b] {
            env.write_config("job_uids = \"300020-300020\"");
        }
        // The first job runs until the second run has been refused.
        let first = a.start(&one_step("long", GATE, ""));
        let gate = gated(&a, 1, 60);
        let second = b.run(&one_step("other", "echo ran", ""));
        open_gates(&gate);
        let first = first.finish();
        first.assert_code(0);
        second.assert_code(2);
        assert!(second.stderr.contains("no free job uid"), "{second}");
        assert!(!second.log.contains("ran"), "{second}");
    }

    #[test]
    fn concurrent_jobs_run_as_distinct_host_uids_from_the_configured_range() {
        require_root();
        let env = Env::new("uids");
        env.write_config("job_uids = \"300000-300009\"");
        // Each job runs until both have been seen running at once.
        let job = one_step(
            "uid",
            &format!("cat /proc/self/uid_map | tr -s ' ' | sed 's/^ */map=/'; {GATE}"),
            "",
        );
        let (mut c1, o1) = env.command(&job, &["--quiet"]);
        let (mut c2, o2) = env.command(&job, &["--quiet"]);
        let (h1, h2) = (c1.spawn().unwrap(), c2.spawn().unwrap());
        open_gates(&gated(&env, 2, 60));
        let r1 = bulwark_tests::Run::from_output(h1.wait_with_output().unwrap(), o1);
        let r2 = bulwark_tests::Run::from_output(h2.wait_with_output().unwrap(), o2);
        r1.assert_code(0);
        r2.assert_code(0);
        let host_uid = |r: &bulwark_tests::Run| -> u32 {
            r.value("map")
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse()
                .unwrap()
        };
        let (u1, u2) = (host_uid(&r1), host_uid(&r2));
        assert_ne!(u1, u2, "two running jobs shared a host uid");
        assert!((300000..=300009).contains(&u1) && (300000..=300009).contains(&u2));
        assert_eq!(r1.value("map"), format!("1000 {u1} 1"));
        assert_eq!(r1.result()["isolation"]["mode"], "root-per-job-uid");
    }
}

/// Two processes spinning for 1.5 s of wall time; prints the CPU time they used together
/// (`cpu=`) and the wall time (`wall=`).
const CPU_HOG: &str = r#"python3 -c '
import os, time
t0 = time.monotonic()
for _ in range(2):
    if os.fork() == 0:
        while time.monotonic() - t0 < 1.5:
            pass
        os._exit(0)
for _ in range(2):
    os.wait()
c = os.times()
print("cpu=%.3f" % (c.children_user + c.children_system))
print("wall=%.3f" % (time.monotonic() - t0))
'"#;

/// `program args...`, started inside the cgroup v2 directory `dir`: a shell moves itself there
/// (writing `0` to its `cgroup.procs`), then execs it (the cgroup v2 VM tests).
fn started_in_cgroup<S: AsRef<std::ffi::OsStr>>(
    dir: &std::path::Path,
    program: S,
    args: impl IntoIterator<Item = S>,
) -> std::process::Command {
    let mut c = std::process::Command::new("/bin/sh");
    c.arg("-c")
        .arg(r#"echo 0 > "$0/cgroup.procs" && exec "$@""#)
        .arg(dir)
        .arg(program)
        .args(args);
    c
}

/// Rootless on cgroup v2 in a cgroup delegated to the user, as systemd makes for a unit with
/// `Delegate=yes`. These hosts are cgroup v1, so only the cgroup v2 VM pass
/// (`tests/vm/cgroup2.sh`, from scripts/test.sh) runs this module: it delegates
/// `$BULWARK_TEST_DELEGATED_CGROUP` to an ordinary user and runs the tests as that user; every
/// other pass skips it with `--skip delegated_v2::`.
mod delegated_v2 {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// A fresh cgroup under the delegated one, like the scope `systemd-run --user --scope -p
    /// Delegate=yes` makes for one command; removed (with what bulwark made in it) on drop.
    struct Scope(PathBuf);

    impl Scope {
        fn new(tag: &str) -> Scope {
            let base = std::env::var_os("BULWARK_TEST_DELEGATED_CGROUP").expect(
                "delegated_v2 tests run in the cgroup v2 VM pass (tests/vm/cgroup2.sh), \
                 which sets BULWARK_TEST_DELEGATED_CGROUP; other passes skip them",
            );
            assert!(
                !bulwark_tests::is_root(),
                "delegated_v2 tests run as an ordinary user"
            );
            let dir =
                Path::new(&base).join(format!("scope-{tag}-{}", bulwark_tests::random_hex(4)));
            fs::create_dir(&dir).unwrap();
            Scope(dir)
        }

        /// `cmd`, started inside this cgroup (the shell moves itself, then execs it).
        fn wrap(&self, cmd: &Command) -> Command {
            self.wrap_in(&self.0, cmd)
        }

        /// `cmd`, started inside the cgroup `dir`.
        fn wrap_in(&self, dir: &Path, cmd: &Command) -> Command {
            started_in_cgroup(dir, cmd.get_program(), cmd.get_args())
        }

        fn run(&self, env: &Env, job: &str) -> bulwark_tests::Run {
            self.run_in(&self.0, env, job)
        }

        fn run_in(&self, dir: &Path, env: &Env, job: &str) -> bulwark_tests::Run {
            let (cmd, out) = env.command(job, &[]);
            let o = self
                .wrap_in(dir, &cmd)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            bulwark_tests::Run::from_output(o, out)
        }

        /// The job cgroups bulwark left in this scope.
        fn job_cgroups(&self) -> Vec<String> {
            fs::read_dir(self.0.join("bulwark"))
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.path().is_dir())
                        .map(|e| e.file_name().into_string().unwrap())
                        .collect()
                })
                .unwrap_or_default()
        }
    }

    impl Drop for Scope {
        fn drop(&mut self) {
            // Children first; a cgroup with processes in it cannot be removed, and then the
            // test has already failed on what it checks.
            for e in ["bulwark", "bulwark-runner"] {
                let d = self.0.join(e);
                if let Ok(rd) = fs::read_dir(&d) {
                    for sub in rd.flatten().filter(|e| e.path().is_dir()) {
                        let _ = fs::remove_dir(sub.path());
                    }
                }
                let _ = fs::remove_dir(&d);
            }
            let _ = fs::remove_dir(&self.0);
        }
    }

    /// A configuration without the rlimit fallback: limits must come from cgroups.
    fn strict_config(env: &Env) {
        fs::write(
            &env.config,
            format!(
                "[limits]\nkill_grace = \"1s\"\n[paths]\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\n",
                env.state.display(),
                env.dir.join("run").display()
            ),
        )
        .unwrap();
    }

    #[test]
    fn a_cpu_limit_is_enforced_in_a_delegated_cgroup_and_refused_where_cpu_was_not_delegated() {
        let scope = Scope::new("cpu");
        let env = Env::new("deleg-cpu");
        strict_config(&env);
        let r = scope.run(
            &env,
            &one_step("cpuhog", CPU_HOG, "[resources]\ncpus = 0.2"),
        );
        r.assert_code(0);
        let cpu: f64 = r.value("cpu").parse().unwrap();
        let wall: f64 = r.value("wall").parse().unwrap();
        assert!(
            cpu / wall < 0.45,
            "{cpu} s of CPU in {wall} s under 0.2\n{r}"
        );
        let res = r.result();
        assert_eq!(res["isolation"]["cgroup"], "v2", "{r}");
        assert!(res["isolation"]["limits_enforced"]
            .to_string()
            .contains("\"cpu\""));
        assert!(
            res["cgroup_counters"]["cpu_throttled_periods"]
                .as_u64()
                .unwrap()
                > 0
        );

        // A cgroup whose parent hands it memory and pids but not cpu (a unit with
        // `Delegate=memory pids`): a job with a CPU limit is refused, naming why.
        let nocpu = Scope::new("nocpu");
        let inner = nocpu.0.join("inner");
        fs::create_dir(&inner).unwrap();
        fs::write(nocpu.0.join("cgroup.subtree_control"), "+memory +pids").unwrap();
        let r = nocpu.run_in(
            &inner,
            &env,
            &one_step("cpu", "echo ran", "[resources]\ncpus = 1"),
        );
        r.assert_code(2);
        assert!(
            r.stderr
                .contains("has no cpu controller to hand to job cgroups")
                && r.stderr.contains("resources.cpus"),
            "{r}"
        );
        assert!(!r.log.contains("ran"), "{r}");
        // Without a CPU limit the same cgroup runs jobs (started, as a second runner would
        // be, in the runner leaf the first one made: `inner` now hands controllers down, so
        // it may hold no process itself).
        let leaf = inner.join("bulwark-runner");
        let r = nocpu.run_in(&leaf, &env, &one_step("nolimit", "echo ran", ""));
        r.assert_code(0);
        for d in ["bulwark", "bulwark-runner"] {
            if let Ok(rd) = fs::read_dir(inner.join(d)) {
                for sub in rd.flatten() {
                    let _ = fs::remove_dir(sub.path());
                }
            }
            let _ = fs::remove_dir(inner.join(d));
        }
        let _ = fs::remove_dir(&inner);
    }

    #[test]
    fn a_daemon_started_in_a_delegated_cgroup_runs_its_jobs_under_cgroup_limits() {
        use bulwark_tests::control::{git_job, register, repo, Coordinator, Daemon};
        let scope = Scope::new("daemon");
        let env = Env::new("deleg-daemon");
        fs::write(
            &env.config,
            format!(
                "[limits]\nkill_grace = \"1s\"\n[paths]\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\n\
                 [fetch]\nfile_roots = [\"{}\"]\n[daemon]\npoll_interval = \"200ms\"\n",
                env.state.display(),
                env.dir.join("run").display(),
                env.dir.display()
            ),
        )
        .unwrap();
        let c = Coordinator::start(&env);
        let token = c.registration_token(&env.dir, "10m");
        let o = register(&env, &c, &token, "deleg");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let (repo, commit) = repo(&env);
        // Started in the delegated cgroup, as systemd starts the unit's main process: the
        // daemon must leave it for the runner leaf, or no run it starts could enable the
        // controllers there and every job would be refused.
        let mut daemon = Daemon::spawn(scope.wrap(&Daemon::command(&env)), &env);
        let spec = git_job(&repo, &commit, "limited", "sh build.sh").replace(
            "[[steps]]",
            "[resources]\nmemory = \"256MiB\"\npids = 64\n[[steps]]",
        );
        let id = c.submit(&spec, "untrusted");
        // The VM is emulated: the git fetch and the job take over a minute here on an idle
        // host, and more when the host is busy.
        let j = c.wait_done(&id, 300);
        let log = fs::read_to_string(env.dir.join("daemon.log")).unwrap_or_default();
        let result = &j["result"]["result"];
        assert_eq!(result["status"], "succeeded", "{j}\n{log}");
        assert_eq!(result["isolation"]["cgroup"], "v2", "{j}");
        let enforced = result["isolation"]["limits_enforced"].to_string();
        assert!(
            enforced.contains("\"memory\"") && enforced.contains("\"pids\""),
            "{j}"
        );
        let daemon_cgroup = fs::read_to_string(format!("/proc/{}/cgroup", daemon.pid())).unwrap();
        assert!(
            daemon_cgroup.trim_end().ends_with("/bulwark-runner"),
            "{daemon_cgroup}"
        );
        assert_eq!(
            daemon.stop(nix::sys::signal::Signal::SIGTERM, 10),
            Some(0),
            "{log}"
        );
    }

    #[test]
    fn a_memory_bomb_is_oom_killed_inside_the_jobs_delegated_cgroup() {
        let scope = Scope::new("mem");
        let env = Env::new("deleg-mem");
        strict_config(&env);
        let run = MEMORY_BOMB;
        let r = scope.run(
            &env,
            &one_step("membomb", run, "[resources]\nmemory = \"64MiB\""),
        );
        assert_oom_killed_in_the_jobs_cgroup(&r);
        let res = r.result();
        assert!(!r.log.contains("allocated"));
        let iso = &res["isolation"];
        assert_eq!(iso["mode"], "rootless-single-uid", "{r}");
        assert_eq!(iso["cgroup"], "v2", "{r}");
        assert!(
            iso.get("weakened")
                .is_none_or(|w| w.as_array().is_none_or(|a| a.is_empty())),
            "{r}"
        );
        let enforced: Vec<&str> = iso["limits_enforced"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            enforced.contains(&"memory") && enforced.contains(&"pids"),
            "{r}"
        );
        // The runner left the scope for its own leaf, so that the scope could hand memory and
        // pids down; the job's cgroup is gone.
        assert!(scope.0.join("bulwark-runner").is_dir());
        let controls = fs::read_to_string(scope.0.join("cgroup.subtree_control")).unwrap();
        assert!(
            controls.contains("memory") && controls.contains("pids"),
            "{controls}"
        );
        assert_eq!(scope.job_cgroups(), Vec::<String>::new());
    }

    /// A rootless job's own limit files belong to the user its processes run as on the host
    /// (module docs of sandbox/src/cgroup.rs): the job tries to raise its memory limit, through
    /// cgroupfs where it would be and through a cgroup2 mount of its own, then allocates past
    /// the limit, which must still hold.
    #[test]
    fn a_job_cannot_raise_its_own_limit_in_a_delegated_cgroup() {
        let scope = Scope::new("raise");
        let env = Env::new("deleg-raise");
        strict_config(&env);
        let run = py(
            &env,
            "raise.py",
            r#"
def attempt(name, f):
    try:
        f(); print(f"{name}=ok", flush=True)
    except OSError as e:
        print(f"{name}={errno.errorcode[e.errno]}", flush=True)
attempt("write_limit", lambda: open("/sys/fs/cgroup/memory.max", "w").write("max"))
os.makedirs("/tmp/cg", exist_ok=True)
ctypes.set_errno(0)
r = libc.mount(b"none", b"/tmp/cg", b"cgroup2", 0, None)
print("mount_cgroup2=" + ("ok" if r == 0 else errno.errorcode[ctypes.get_errno()]), flush=True)
print("cgroupfs_seen=" + ("yes" if os.path.exists("/tmp/cg/cgroup.procs") else "no"), flush=True)
b = bytearray(512 * 1024 * 1024)
print("allocated", flush=True)
"#,
        );
        let r = scope.run(
            &env,
            &one_step(
                "raise",
                &format!("exec {run}"),
                "[resources]\nmemory = \"64MiB\"",
            ),
        );
        assert_eq!(r.value("write_limit"), "ENOENT", "{r}");
        assert_eq!(r.value("mount_cgroup2"), "EPERM", "{r}");
        assert_eq!(r.value("cgroupfs_seen"), "no", "{r}");
        assert_oom_killed_in_the_jobs_cgroup(&r);
    }

    #[test]
    fn a_fork_bomb_stops_at_the_pids_limit_of_the_delegated_cgroup() {
        let scope = Scope::new("pids");
        let env = Env::new("deleg-pids");
        strict_config(&env);
        let run = py(&env, "bomb.py", FORK_BOMB);
        let r = scope.run(&env, &one_step("bomb", &run, "[resources]\npids = 64"));
        assert_stopped_by_the_pids_limit(&r);
        assert!(processes_with("bomb.py").is_empty());
        assert_eq!(scope.job_cgroups(), Vec::<String>::new());
    }

    /// The deployment the subuid mode is for: a dedicated user, a cgroup systemd delegated to
    /// it, and a subordinate range: the job runs as a uid of the range, under real cgroup
    /// limits, and its files come back (the job directory, with a 0500 directory and a 0000
    /// file of the job's, is removed).
    #[test]
    fn a_subuid_job_in_a_delegated_cgroup_has_its_own_uid_and_cgroup_limits() {
        let scope = Scope::new("subuid");
        let env = Env::new("deleg-subuid");
        strict_config(&env);
        let mut config = fs::read_to_string(&env.config).unwrap();
        config = config.replace("[limits]\n", "[limits]\nisolation = \"subuid\"\n");
        fs::write(&env.config, config).unwrap();
        let run = py(&env, "bomb.py", FORK_BOMB);
        let r = scope.run(
            &env,
            &one_step(
                "bomb",
                &format!(
                    "echo map=$(cat /proc/self/uid_map) && {run} && mkdir -p d && echo x > d/f && \
                     chmod 000 d/f && chmod 500 d"
                ),
                // No outputs: signing provenance hashes the runner's debug binary, which
                // takes minutes under the VM's emulation (the host pass checks outputs).
                "[resources]\npids = 64",
            ),
        );
        assert_stopped_by_the_pids_limit(&r);
        let iso = &r.result()["isolation"];
        assert_eq!(
            (iso["mode"].as_str(), iso["cgroup"].as_str()),
            (Some("subuid"), Some("v2")),
            "{r}"
        );
        let map: Vec<u32> = r
            .value("map")
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        let me = nix::unistd::getuid().as_raw();
        assert!(
            map.len() == 3 && map[0] == 1000 && map[1] != me && map[2] == 1,
            "{r}"
        );
        assert!(processes_with("bomb.py").is_empty());
        assert_eq!(scope.job_cgroups(), Vec::<String>::new());
        assert_eq!(
            fs::read_dir(env.state.join("jobs")).unwrap().count(),
            0,
            "{r}"
        );
    }

    /// `bulwark exec` starts its helper before it makes the job's cgroup, so the helper is in
    /// the scope too when the runner lays it out; it must move along, or the scope could never
    /// hand its controllers down.
    #[test]
    fn exec_runs_with_cgroup_limits_in_a_delegated_cgroup() {
        let scope = Scope::new("exec");
        let env = Env::new("deleg-exec");
        strict_config(&env);
        let mut cmd = Command::new(bulwark_tests::bulwark_bin());
        cmd.arg("exec")
            .arg("--config")
            .arg(&env.config)
            .args(["--", "/bin/sh", "-c", "echo ran"]);
        let o = scope.wrap(&cmd).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{stderr}");
        assert!(stderr.contains("ran"), "{stderr}");
        assert!(scope.0.join("bulwark-runner").is_dir());
        assert_eq!(scope.job_cgroups(), Vec::<String>::new());
    }

    /// Two runners started in one fresh delegated cgroup at the same moment: each finds the
    /// other still there while it lays the cgroup out; both must run (one in five was refused
    /// before enabling the controllers was retried).
    #[test]
    fn two_runners_started_at_once_in_one_delegated_cgroup_both_run() {
        for round in 0..5 {
            let scope = Scope::new(&format!("pair{round}"));
            let env = Env::new("deleg-pair");
            strict_config(&env);
            let (a, out_a) = env.command(&one_step("a", "true", ""), &["--quiet"]);
            let (b, out_b) = env.command(&one_step("b", "true", ""), &["--quiet"]);
            let spawn = |c: &Command| {
                scope
                    .wrap(c)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            };
            let (ha, hb) = (spawn(&a), spawn(&b));
            let ra = bulwark_tests::Run::from_output(ha.wait_with_output().unwrap(), out_a);
            let rb = bulwark_tests::Run::from_output(hb.wait_with_output().unwrap(), out_b);
            ra.assert_code(0);
            rb.assert_code(0);
            assert_eq!(ra.result()["isolation"]["cgroup"], "v2", "{ra}");
            assert_eq!(rb.result()["isolation"]["cgroup"], "v2", "{rb}");
        }
    }

    /// Each `systemd-run --scope` is a cgroup of its own: the run that cleans up after a killed
    /// one finds its job cgroup through the dead run's job directory, not by looking in its
    /// own scope.
    #[test]
    fn a_killed_runners_job_cgroup_is_removed_by_the_next_run_from_another_scope() {
        let (first, second) = (Scope::new("killed"), Scope::new("next"));
        let env = Env::new("deleg-killed");
        strict_config(&env);
        let dur = format!(
            "600.{}",
            u16::from_str_radix(&bulwark_tests::random_hex(2), 16).unwrap()
        );
        let (cmd, _) = env.command(&one_step("long", &format!("sleep {dur}"), ""), &[]);
        let mut runner = first
            .wrap(&cmd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        bulwark_tests::wait_for_process(&format!("sleep {dur}"), "the job", 30);
        let stale = first.job_cgroups();
        assert_eq!(stale.len(), 1, "{stale:?}");
        runner.kill().unwrap(); // SIGKILL: the runner cleans nothing up itself
        runner.wait().unwrap();
        bulwark_tests::wait_for_no_process(
            &format!("sleep {dur}"),
            "job processes outlived the killed runner",
            30,
        );
        assert_eq!(
            first.job_cgroups(),
            stale,
            "the dead run's cgroup is still there"
        );
        let r = second.run(&env, &one_step("next", "true", ""));
        r.assert_code(0);
        assert!(r.stderr.contains("cleaned up after 1 dead run"), "{r}");
        assert_eq!(first.job_cgroups(), Vec::<String>::new());
    }

    #[test]
    fn probe_tells_a_delegated_cgroup_from_one_that_is_not() {
        let scope = Scope::new("probe");
        let probe = |cmd: Command| {
            let o = { cmd }.output().unwrap();
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let line = text
                .lines()
                .find(|l| l.starts_with("cgroups "))
                .unwrap_or_else(|| panic!("no cgroups line in:\n{text}"))
                .to_string();
            (o.status.code(), line)
        };
        let mut cmd = Command::new(bulwark_tests::bulwark_bin());
        cmd.arg("probe");
        let (_, line) = probe(scope.wrap(&cmd));
        assert!(line.contains(" ok "), "{line}");
        assert!(
            line.contains(&format!(
                "job cgroups under {}/bulwark, the cgroup bulwark started in",
                scope.0.display()
            )),
            "{line}"
        );
        // The test harness's own cgroup belongs to root: not delegated.
        let (code, line) = probe(cmd);
        assert_eq!(code, Some(1), "{line}");
        assert!(line.contains("not delegated to this user"), "{line}");
        assert!(line.contains("Delegate=yes"), "{line}");
    }

    /// Once a runner has laid out its scope, the scope holds no process and cannot take one;
    /// a runner started later from the first one's leaf (a wrapper script, or a service's
    /// main process starting runs) finds the same layout and uses it.
    #[test]
    fn a_runner_started_from_the_runner_leaf_reuses_the_layout() {
        let scope = Scope::new("twice");
        let env = Env::new("deleg-twice");
        strict_config(&env);
        let first = scope.run(&env, &one_step("first", "true", ""));
        first.assert_code(0);
        let leaf = scope.0.join("bulwark-runner");
        let second = scope.run_in(
            &leaf,
            &env,
            &one_step("second", "true", "[resources]\npids = 32"),
        );
        second.assert_code(0);
        assert_eq!(second.result()["isolation"]["cgroup"], "v2", "{second}");
        assert!(!scope
            .0
            .join("bulwark-runner")
            .join("bulwark-runner")
            .exists());
        assert_eq!(scope.job_cgroups(), Vec::<String>::new());
    }

    #[test]
    fn a_delegated_cgroup_that_holds_another_process_is_refused_with_the_reason() {
        let scope = Scope::new("shared");
        let env = Env::new("deleg-shared");
        strict_config(&env);
        // Another process in the scope, as when the scope is an interactive shell's.
        let mut other = scope.wrap(Command::new("sleep").arg("60")).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while fs::read_to_string(scope.0.join("cgroup.procs"))
            .unwrap()
            .trim()
            .is_empty()
        {
            assert!(Instant::now() < deadline, "sleep never joined the scope");
            std::thread::sleep(Duration::from_millis(20));
        }
        let r = scope.run(&env, &one_step("shared", "true", ""));
        let _ = other.kill();
        let _ = other.wait();
        r.assert_code(2);
        let said = format!(
            "{}{}",
            r.stderr,
            r.result.as_ref().map(|v| v.to_string()).unwrap_or_default()
        );
        assert!(
            said.contains("still holds processes other than bulwark's"),
            "{r}"
        );
        assert!(said.contains("Delegate=yes"), "{r}");
        assert!(said.contains(&scope.0.display().to_string()), "{r}");
    }
}

/// Root on cgroup v2: where job cgroups go. Like `delegated_v2`, only the cgroup v2 VM pass
/// runs these (as root); every other pass skips them with `--skip root_v2::`.
mod root_v2 {
    use super::*;
    use std::path::Path;
    use std::process::{Command, Stdio};

    /// Runs a job that sleeps from inside the cgroup `dir` (relative to the cgroup2 root), and
    /// returns the job process's cgroup as the host sees it.
    fn job_cgroup_when_started_in(dir: &str) -> String {
        job_cgroup_when_started_in_with(dir, &[])
    }

    /// The same, with the runner started through `wrapper` (a command and its arguments that
    /// end by running what follows them, such as `setpriv ...`).
    fn job_cgroup_when_started_in_with(dir: &str, wrapper: &[&str]) -> String {
        assert!(bulwark_tests::is_root(), "root_v2 tests run as root");
        let root = Path::new("/sys/fs/cgroup");
        assert!(
            root.join("cgroup.controllers").exists(),
            "root_v2 tests need cgroup2 at /sys/fs/cgroup: the cgroup v2 VM pass runs them"
        );
        let env = Env::new("rootv2");
        // A duration no other process uses marks the job's `sleep` (the shell execs it).
        let marker = format!(
            "sleep 3.{}",
            u16::from_str_radix(&bulwark_tests::random_hex(2), 16).unwrap()
        );
        let (cmd, out) = env.command(&one_step("where", &marker, ""), &[]);
        let (program, args) = match wrapper.split_first() {
            Some((first, rest)) => (
                std::ffi::OsStr::new(first),
                rest.iter()
                    .map(std::ffi::OsStr::new)
                    .chain(std::iter::once(cmd.get_program()))
                    .chain(cmd.get_args())
                    .collect::<Vec<_>>(),
            ),
            None => (cmd.get_program(), cmd.get_args().collect()),
        };
        let mut child = started_in_cgroup(&root.join(dir), program, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let pid = loop {
            if let Some(p) = processes_with(&marker).first() {
                break *p;
            }
            if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                let r = bulwark_tests::Run::from_output(child.wait_with_output().unwrap(), out);
                panic!("the job's {marker} was never seen running\n{r}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let r = bulwark_tests::Run::from_output(child.wait_with_output().unwrap(), out);
        r.assert_code(0);
        assert_eq!(r.result()["isolation"]["cgroup"], "v2", "{r}");
        cgroup.trim().to_string()
    }

    /// The `cgroups` line of `bulwark probe` started in the cgroup `dir`.
    fn probe_cgroups_line_in(dir: &str) -> String {
        let bin = bulwark_tests::bulwark_bin();
        let o = started_in_cgroup(
            &Path::new("/sys/fs/cgroup").join(dir),
            bin.as_os_str(),
            [std::ffi::OsStr::new("probe")],
        )
        .output()
        .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        text.lines()
            .find(|l| l.starts_with("cgroups "))
            .unwrap_or_else(|| {
                panic!(
                    "no cgroups line in:\n{text}\n{}",
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .to_string()
    }

    /// Marks `dir` delegated the way systemd does, with the extended attributes named.
    fn mark(dir: &Path, names: &[&str]) {
        for name in names {
            let status = Command::new("python3")
                .arg("-c")
                .arg("import os, sys; os.setxattr(sys.argv[1], sys.argv[2], b'1')")
                .arg(dir)
                .arg(name)
                .status()
                .unwrap();
            assert!(status.success(), "setting {name} on {}", dir.display());
        }
    }

    /// systemd marks the cgroups it delegates to other users too (`user@.service`): a job a
    /// root runner placed there could be moved out of its limits by that user, who owns the
    /// cgroup's `cgroup.procs`. Such a cgroup is never used.
    #[test]
    fn a_root_runner_never_puts_jobs_in_a_marked_cgroup_another_user_owns() {
        let name = format!("usr-{}", bulwark_tests::random_hex(4));
        let dir = Path::new("/sys/fs/cgroup").join(&name);
        fs::create_dir(&dir).unwrap();
        mark(&dir, &["trusted.delegate", "user.delegate"]);
        for f in [
            "",
            "cgroup.procs",
            "cgroup.subtree_control",
            "cgroup.threads",
        ] {
            std::os::unix::fs::chown(dir.join(f), Some(65534), Some(65534)).unwrap();
        }
        let placed = job_cgroup_when_started_in(&name);
        assert!(placed.starts_with("0::/bulwark/"), "{placed}");
        assert!(!dir.join("bulwark-runner").exists());
        remove_cgroup(&dir);
    }

    /// `systemd/bulwark.service` does not grant CAP_SYS_ADMIN, without which `trusted.*`
    /// attributes read as absent; systemd's `user.delegate` mark on a root-owned cgroup is
    /// enough.
    #[test]
    fn a_root_runner_without_cap_sys_admin_finds_the_user_delegate_mark() {
        let name = format!("svc-{}", bulwark_tests::random_hex(4));
        let dir = Path::new("/sys/fs/cgroup").join(&name);
        fs::create_dir(&dir).unwrap();
        mark(&dir, &["trusted.delegate", "user.delegate"]);
        let without = ["setpriv", "--bounding-set", "-sys_admin", "--"];
        let placed = job_cgroup_when_started_in_with(&name, &without);
        assert!(
            placed.starts_with(&format!("0::/{name}/bulwark/")),
            "{placed}"
        );
        remove_cgroup(&dir);
    }

    /// Removes a test cgroup and what bulwark made in it (everything has exited by then).
    fn remove_cgroup(dir: &Path) {
        for sub in ["bulwark", "bulwark-runner"] {
            let _ = fs::remove_dir(dir.join(sub));
        }
        fs::remove_dir(dir).unwrap();
    }

    #[test]
    fn a_root_runner_keeps_jobs_inside_a_cgroup_systemd_delegated_and_nowhere_else() {
        let name = format!("svc-{}", bulwark_tests::random_hex(4));
        let svc = Path::new("/sys/fs/cgroup").join(&name);
        fs::create_dir(&svc).unwrap();
        // Not marked: as from a root shell, jobs go under the hierarchy's root, and probe
        // says so.
        let plain = job_cgroup_when_started_in(&name);
        assert!(plain.starts_with("0::/bulwark/"), "{plain}");
        let line = probe_cgroups_line_in(&name);
        assert!(
            line.contains("job cgroups under /sys/fs/cgroup/bulwark (bulwark was not started in a cgroup systemd delegated to root)"),
            "{line}"
        );
        // Marked the way systemd marks a unit with Delegate=yes: jobs stay inside it.
        mark(&svc, &["trusted.delegate"]);
        let delegated = job_cgroup_when_started_in(&name);
        assert!(
            delegated.starts_with(&format!("0::/{name}/bulwark/")),
            "{delegated}"
        );
        // (The laid-out cgroup takes no process any more; a later runner starts in the leaf.)
        let line = probe_cgroups_line_in(&format!("{name}/bulwark-runner"));
        assert!(
            line.contains(&format!(
                "job cgroups under {}/bulwark, which systemd delegated to root",
                svc.display()
            )),
            "{line}"
        );
        assert!(svc.join("bulwark-runner").is_dir());
        let jobs_left = fs::read_dir(svc.join("bulwark"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .count();
        assert_eq!(jobs_left, 0, "job cgroups left in {}", svc.display());
        remove_cgroup(&svc);
    }
}

/// A kernel that lacks a layer: every job is refused before anything runs, naming the layer,
/// and `probe` says what is missing. Run only by `tests/vm/missing-layers.sh`, which boots the
/// test VM with Landlock left out of the kernel's `lsm=` list; every other pass skips them
/// with `--skip missing_layers::`.
mod missing_layers {
    use super::*;

    fn probe() -> (Option<i32>, String) {
        let o = std::process::Command::new(bulwark_tests::bulwark_bin())
            .arg("probe")
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    fn line<'a>(probe: &'a str, layer: &str) -> &'a str {
        probe
            .lines()
            .find(|l| l.starts_with(&format!("{layer} ")))
            .unwrap_or_else(|| panic!("no {layer} line in:\n{probe}"))
    }

    /// Refused with exit 2 before any step ran, and nothing of the step happened.
    fn assert_refused_naming(env: &Env, layer: &str) {
        let marker = env.dir.join("step-ran");
        let r = env.run(&one_step(
            "refused",
            &format!("touch {}", marker.display()),
            "",
        ));
        r.assert_code(2);
        assert!(
            r.stderr
                .contains(&format!("this host cannot enforce {layer}")),
            "{r}"
        );
        assert_eq!(r.result()["status"], "refused", "{r}");
        assert_eq!(r.result()["steps"].as_array().map(Vec::len), Some(0), "{r}");
        assert!(!marker.exists());
    }

    #[test]
    fn a_kernel_booted_without_landlock_refuses_every_job_and_probe_says_why() {
        let lsm = fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
        assert!(
            !lsm.is_empty() && !lsm.contains("landlock"),
            "missing_layers tests need a kernel booted without Landlock \
             (tests/vm/missing-layers.sh); active LSMs: {lsm:?}"
        );
        let (code, text) = probe();
        assert_eq!(code, Some(1), "{text}");
        let landlock = line(&text, "landlock");
        assert!(landlock.contains("MISSING"), "{landlock}");
        assert!(landlock.contains("lsm= boot list"), "{landlock}");
        assert_refused_naming(&Env::new("nolandlock"), "landlock");
    }

    /// `user.max_user_namespaces = 0` (how some hardening guides switch user namespaces off):
    /// named before anything else. Changes the VM's sysctl for the test's duration, so the
    /// module runs with one test thread.
    #[test]
    fn without_user_namespaces_every_job_is_refused_and_probe_says_why() {
        let knob = "/proc/sys/user/max_user_namespaces";
        let before = fs::read_to_string(knob).unwrap();
        fs::write(knob, "0").unwrap();
        let (code, text) = probe();
        let refused = std::panic::catch_unwind(|| {
            assert_refused_naming(&Env::new("nouserns"), "user-namespaces")
        });
        fs::write(knob, before.trim()).unwrap();
        assert_eq!(code, Some(1), "{text}");
        let userns = line(&text, "user-namespaces");
        assert!(userns.contains("MISSING"), "{userns}");
        assert!(userns.contains("user.max_user_namespaces=0"), "{userns}");
        if let Err(e) = refused {
            std::panic::resume_unwind(e);
        }
    }
}

/// Tests of the rootless path (run by scripts/test.sh as an ordinary user).
mod rootless_mode {
    use super::*;

    fn require_rootless() {
        assert!(
            !bulwark_tests::is_root(),
            "rootless_mode tests run as an ordinary user; the root pass skips them"
        );
    }

    #[test]
    fn without_cgroups_a_job_is_refused_unless_rlimit_fallback_is_allowed() {
        require_rootless();
        let env = Env::new("fallback");
        // The test configuration allows the fallback; without it the job is refused.
        fs::write(
            &env.config,
            format!("[paths]\nstate_dir = \"{}\"\n", env.state.display()),
        )
        .unwrap();
        let r = env.run(&one_step("nofallback", "true", ""));
        r.assert_code(2);
        assert!(
            r.stderr.contains("cannot enforce cgroups")
                || r.result().to_string().contains("cannot enforce cgroups"),
            "{r}"
        );
        env.write_config("");
        let r = env.run(&one_step(
            "fallback",
            "python3 -c 'bytearray(512 * 1024 * 1024)' 2>&1 | tail -1",
            "[resources]\nmemory = \"128MiB\"",
        ));
        r.assert_code(0);
        assert!(
            r.log.contains("MemoryError"),
            "RLIMIT_AS did not bound memory\n{r}"
        );
        let iso = &r.result()["isolation"];
        assert_eq!(iso["mode"], "rootless-single-uid");
        assert_eq!(iso["cgroup"], "none");
        assert_eq!(iso["weakened"][0], "rlimit-fallback");
    }

    #[test]
    fn a_job_disk_is_refused_without_root() {
        require_rootless();
        let env = Env::new("disk-rootless");
        let r = env.run(&one_step(
            "disk",
            "echo ran",
            "[resources]\ndisk = \"64MiB\"",
        ));
        r.assert_code(2);
        assert!(
            r.stderr
                .contains("cannot give the job its disk of 64MiB (resources.disk")
                && r.stderr.contains("needs root"),
            "{r}"
        );
        assert!(!r.log.contains("ran"), "{r}");
    }

    #[test]
    fn a_cpu_limit_is_refused_where_only_rlimits_are_left() {
        require_rootless();
        // These hosts give an ordinary user no cgroup: the fallback the test configuration
        // allows covers memory and pids, never a CPU limit.
        let env = Env::new("cpu-fallback");
        let r = env.run(&one_step("cpu", "echo ran", "[resources]\ncpus = 1"));
        r.assert_code(2);
        assert!(
            r.stderr
                .contains("cannot enforce the job's CPU limit of 1 (resources.cpus")
                && r.stderr.contains("rlimits cannot replace here"),
            "{r}"
        );
        assert!(!r.log.contains("ran"), "{r}");
    }

    /// `limits.isolation = "subuid"`: each job runs as a uid of the runner's subordinate range.
    mod subuid {
        use super::*;
        use bulwark_tests::Run;
        use std::os::unix::fs::MetadataExt;

        /// This user's first subordinate uid range, which the runner uses when
        /// `limits.job_uids` is not set. scripts/test.sh grants one and installs newuidmap.
        fn grant() -> (u32, u32) {
            require_rootless();
            let me = nix::unistd::User::from_uid(nix::unistd::getuid())
                .unwrap()
                .unwrap()
                .name;
            let text = fs::read_to_string("/etc/subuid").unwrap_or_default();
            let range = text.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() == 3 && f[0] == me).then(|| {
                    let first: u32 = f[1].parse().unwrap();
                    (first, first + f[2].parse::<u32>().unwrap() - 1)
                })
            });
            assert!(
                std::path::Path::new("/usr/bin/newuidmap").exists(),
                "subuid tests need newuidmap (apt install uidmap; scripts/test.sh checks it)"
            );
            range.expect(
                "subuid tests need a /etc/subuid grant for this user (scripts/test.sh makes one)",
            )
        }

        /// A subuid-mode environment leasing from `part` (a tenth of the grant each): runners
        /// of one user share one lease directory, but these tests' environments each have their
        /// own, so each test takes ids no other test uses.
        fn env(tag: &str, part: u32) -> Env {
            let (first, last) = grant();
            let size = (last - first + 1) / 10;
            let env = Env::new(tag);
            env.write_config(&format!(
                "isolation = \"subuid\"\njob_uids = \"{}-{}\"",
                first + part * size,
                first + part * size + size - 1
            ));
            env
        }

        /// Real, effective, saved and filesystem uids of `pid` as the host sees them.
        fn host_uids(pid: i32) -> Vec<u32> {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
            line.split_whitespace()
                .skip(1)
                .map(|v| v.parse().unwrap())
                .collect()
        }

        #[test]
        fn a_job_runs_as_a_subordinate_uid_and_its_files_come_back_to_the_runner() {
            let (first, last) = grant();
            let me = nix::unistd::getuid().as_raw();
            let env = env("subuid-run", 0);
            // The state directory sits under one only this user can enter (as under a home
            // directory of mode 0700): the job's uid never walks that path.
            fs::set_permissions(
                &env.dir,
                std::os::unix::fs::PermissionsExt::from_mode(0o700),
            )
            .unwrap();
            let marker = format!("subuid-run-{}", rand_digits());
            // The job makes its output unreadable and a directory the runner could not enter
            // or empty were it still the job's; both must come back. It runs until the test
            // has looked at it.
            let job = one_step(
                "subuid",
                &format!(
                    "echo map=$(cat /proc/self/uid_map) && echo gmap=$(cat /proc/self/gid_map) && \
                     echo groups=$(id -G) && echo secret > out.txt && chmod 000 out.txt && \
                     mkdir -p locked/deeper && touch locked/deeper/f && chmod 500 locked/deeper locked && \
                     echo t > /tmp/t && {GATE} # {marker}"
                ),
                "[outputs]\npaths = [\"out.txt\"]",
            );
            let (mut cmd, out) = env.command(&job, &[]);
            let child = cmd
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            // While it runs: the job's process (its step's shell, waiting at the gate) is, on
            // the host, a uid of the grant; so are its workspace and /tmp.
            let gate = gated(&env, 1, 60);
            let shell = bulwark_tests::wait_for_process(&marker, "the job", 20);
            let uids = host_uids(shell);
            let jobdir = fs::read_dir(env.state.join("jobs"))
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path();
            let ws_owner = fs::symlink_metadata(jobdir.join("workspace"))
                .unwrap()
                .uid();
            let tmp_owner = fs::symlink_metadata(jobdir.join("tmp")).unwrap().uid();
            open_gates(&gate);
            let r = Run::from_output(child.wait_with_output().unwrap(), out);
            r.assert_code(0);
            let job_uid = uids[0];
            assert!(uids.iter().all(|u| *u == job_uid), "{uids:?}");
            assert!(
                (first..=last).contains(&job_uid) && job_uid != me,
                "job ran as host uid {job_uid}, not one of {first}-{last}\n{r}"
            );
            assert_eq!(
                (ws_owner, tmp_owner),
                (job_uid, job_uid),
                "workspace and /tmp owners"
            );
            // Inside: one uid and one gid mapped, to that uid; no supplementary group of the
            // runner's came along.
            let map: Vec<u32> = r
                .value("map")
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect();
            assert_eq!(map, [1000, job_uid, 1], "{r}");
            let gmap: Vec<u32> = r
                .value("gmap")
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect();
            assert_eq!(gmap, [1000, job_uid, 1], "{r}");
            assert_eq!(r.value("groups"), "1000", "{r}");
            assert_eq!(r.result()["isolation"]["mode"], "subuid");
            // The 0000 output was read after the hand-back, and the job directory is gone.
            assert_eq!(
                fs::read_to_string(r.out.join("out.txt")).unwrap(),
                "secret\n"
            );
            assert_eq!(
                r.result()["outputs"][0]["sha256"],
                sha256_file(&r.out.join("out.txt"))
            );
            assert_eq!(
                fs::read_dir(env.state.join("jobs")).unwrap().count(),
                0,
                "the job directory was left behind\n{r}"
            );
        }

        #[test]
        fn a_cache_written_by_a_subordinate_uid_is_saved_and_restored_to_the_next_job() {
            grant();
            let env = env("subuid-cache", 4);
            // Left unreadable and in a directory the runner could not enter were it still the
            // job's: the hand-back must come before the save.
            let job = |run: &str| {
                one_step(
                    "subuid-cache",
                    run,
                    "[[caches]]\nname = \"deps\"\n[outputs]\npaths = [\"out.txt\"]",
                )
            };
            let first = env.run_with(
                &job(
                    "mkdir -p /cache/deps/d && echo kept > /cache/deps/d/lib && \
                      printf '#!/bin/sh\\necho ran\\n' > /cache/deps/tool && \
                      chmod 755 /cache/deps/tool && \
                      chmod 000 /cache/deps/d/lib && chmod 500 /cache/deps/d && echo x > out.txt",
                ),
                &["--trust", "trusted"],
            );
            first.assert_code(0);
            assert_eq!(first.result()["isolation"]["mode"], "subuid");
            assert_eq!(
                first.result()["inputs"]["caches"][0]["saved"]["files"],
                2,
                "{first}"
            );
            let second = env.run_with(
                &job("chmod 700 /cache/deps/d && chmod 600 /cache/deps/d/lib && \
                      echo found=$(cat /cache/deps/d/lib) && echo tool=$(/cache/deps/tool) && \
                      echo x > out.txt"),
                &["--trust", "trusted"],
            );
            second.assert_code(0);
            assert_eq!(second.value("found"), "kept", "{second}");
            // A program saved in a cache still runs.
            assert_eq!(second.value("tool"), "ran", "{second}");
            assert_eq!(
                fs::read_dir(env.state.join("jobs")).unwrap().count(),
                0,
                "the job directories were left behind\n{second}"
            );
        }

        #[test]
        fn a_dead_subuid_run_is_taken_back_and_removed_by_the_next_run() {
            let (first, last) = grant();
            let env = env("subuid-dead", 1);
            let marker = format!("29{}", rand_digits());
            // Its cache directory too is left locked, as the job's uid's.
            let job = one_step(
                "victim",
                &format!(
                    "mkdir -p a/b /cache/c/x && touch a/b/f /cache/c/x/f && \
                     chmod 500 a/b a /cache/c/x && sleep {marker}"
                ),
                "[[caches]]\nname = \"c\"",
            );
            // SIGKILL: nothing is handed back.
            kill_runner_mid_job(&env, &job, &format!("sleep {marker}"), 1);
            let jobdir = fs::read_dir(env.state.join("jobs"))
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path();
            // The workspace is still the job's uid's (this user cannot even look inside).
            let owner = fs::symlink_metadata(jobdir.join("workspace"))
                .unwrap()
                .uid();
            assert!(
                (first..=last).contains(&owner),
                "left behind owned by {owner}"
            );
            // This user cannot remove it as it is.
            assert!(bulwark_tests::remove_tree(&jobdir.join("workspace")).is_err());
            assert!(bulwark_tests::remove_tree(&jobdir.join("cache")).is_err());
            let r = env.run(&one_step("next", "true", ""));
            r.assert_code(0);
            assert!(r.stderr.contains("cleaned up after 1 dead run"), "{r}");
            assert_eq!(
                fs::read_dir(env.state.join("jobs")).unwrap().count(),
                0,
                "the dead run's directory is still there\n{r}"
            );
        }

        #[test]
        fn under_no_new_privs_subuid_mode_refuses_before_anything_is_made() {
            // systemd's NoNewPrivileges=yes would leave the setuid id-mapping tools powerless.
            grant();
            let env = env("subuid-nnp", 2);
            let (cmd, out) = env.command(&one_step("nnp", "echo ran", ""), &[]);
            let o = std::process::Command::new("setpriv")
                .arg("--no-new-privs")
                .arg(cmd.get_program())
                .args(cmd.get_args())
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            let r = Run::from_output(o, out);
            r.assert_code(2);
            assert!(r.stderr.contains("runs with no_new_privs"), "{r}");
            assert!(!r.stdout.contains("ran"), "{r}");
            assert!(
                fs::read_dir(env.state.join("jobs")).map_or(true, |mut d| d.next().is_none()),
                "a job directory was made\n{r}"
            );
        }

        #[test]
        fn runners_with_different_runtime_directories_never_share_a_job_uid() {
            // Leases of one user's grant are locked in one place whatever the configuration
            // says; two environments here have runtime directories of their own.
            let (a, b) = (env("subuid-pair-a", 3), env("subuid-pair-b", 3));
            // A run of b's first leaves the first uid's lease marked clean (no process left),
            // which a lease directory of b's own would then trust without looking at /proc.
            b.run(&one_step("warm", "true", "")).assert_code(0);
            // The first job runs until the second has run.
            let map = "echo map=$(cat /proc/self/uid_map)";
            let job = one_step("pair", &format!("{map} && {GATE}"), "");
            let (mut cmd, out) = a.command(&job, &[]);
            let first = cmd
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let gate = gated(&a, 1, 60);
            let second = b.run(&one_step("pair", map, ""));
            open_gates(&gate);
            let first = Run::from_output(first.wait_with_output().unwrap(), out);
            first.assert_code(0);
            second.assert_code(0);
            let host = |r: &Run| -> u32 {
                r.value("map")
                    .split_whitespace()
                    .nth(1)
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            assert_ne!(host(&first), host(&second), "{first}\n{second}");
        }

        #[test]
        fn job_uids_outside_the_grant_are_refused_naming_the_key() {
            let (first, _) = grant();
            let env = Env::new("subuid-range");
            let outside = first.checked_sub(20).unwrap_or(u32::MAX - 20);
            env.write_config(&format!(
                "isolation = \"subuid\"\njob_uids = \"{outside}-{}\"",
                outside + 9
            ));
            let r = env.run(&one_step("refused", "true", ""));
            r.assert_code(2);
            assert!(
                r.stderr.contains("limits.isolation = \"subuid\"")
                    && r.stderr
                        .contains(&format!("limits.job_uids {outside}-{}", outside + 9))
                    && r.stderr
                        .contains("is not inside this user's subordinate ranges"),
                "{r}"
            );
        }
    }
}

/// Every form the signing key could leak in: PEM text, a PEM body line, PKCS#8 DER, the raw
/// private scalar, and base64 or hex of each.
fn key_forms(pem: &str) -> Vec<Vec<u8>> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = b64.decode(&body).unwrap();
    // PKCS#8 of a P-256 key: the ECPrivateKey's version 1 is followed by OCTET STRING(32).
    let at = der
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .expect("P-256 PKCS#8");
    let scalar = der[at + 5..at + 37].to_vec();
    let hex = |b: &[u8]| {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
            .into_bytes()
    };
    vec![
        pem.as_bytes().to_vec(),
        pem.lines().nth(1).unwrap().as_bytes().to_vec(),
        body.clone().into_bytes(),
        der.clone(),
        scalar.clone(),
        b64.encode(&scalar).into_bytes(),
        hex(&scalar),
        hex(&der),
    ]
}

#[test]
fn the_signing_key_is_nowhere_a_job_can_look() {
    let env = Env::new("keyhunt");
    // Run once without --key so the runner creates its default key, and make an explicit one.
    env.run(&one_step(
        "first",
        "echo x > o.txt",
        "[outputs]\npaths = [\"o.txt\"]",
    ))
    .assert_code(0);
    let default_pem = fs::read_to_string(env.state.join("keys/signing.key")).unwrap();
    let keys = env.dir.join("keys");
    let o = std::process::Command::new(bulwark_tests::bulwark_bin())
        .args(["keygen", "--out"])
        .arg(&keys)
        .output()
        .unwrap();
    assert!(o.status.success());
    let explicit_pem = fs::read_to_string(keys.join("signing.key")).unwrap();
    // The patterns reach the job masked, so the literal bytes exist nowhere in its view.
    let mask = 0x5a_u8;
    let patterns: Vec<String> = key_forms(&default_pem)
        .into_iter()
        .chain(key_forms(&explicit_pem))
        .map(|p| p.iter().map(|b| format!("{:02x}", b ^ mask)).collect())
        .collect();
    env.write_src("patterns.txt", &patterns.join("\n"));
    env.write_src(
        "hunt.py",
        &format!(
            r#"
import os, stat
MASK = {mask}
pats = [bytes(b ^ MASK for b in bytes.fromhex(l)) for l in open("patterns.txt").read().split()]
os.remove("patterns.txt")
found, scanned, denied = [], 0, 0
def check(label, data):
    for i, p in enumerate(pats):
        if p in data:
            found.append(f"{{label}} (form {{i}})")
for k, v in os.environ.items():
    check("environment " + k, (k + "=" + v).encode())
for p in ["/proc/1/environ", "/proc/self/environ", "/proc/1/cmdline", "/proc/1/maps"]:
    try:
        check(p, open(p, "rb").read())
    except OSError:
        denied += 1
for pid in [d for d in os.listdir("/proc") if d.isdigit()]:
    try:
        fds = os.listdir(f"/proc/{{pid}}/fd")
    except OSError:
        denied += 1
        continue
    for fd in fds:
        path = f"/proc/{{pid}}/fd/{{fd}}"
        try:
            # Regular files only: reopening a pipe or a terminal could block forever.
            if not stat.S_ISREG(os.stat(path).st_mode):
                continue
            with open(path, "rb") as f:
                check(path, f.read(8 << 20))
        except OSError:
            pass
for root, dirs, files in os.walk("/", topdown=True):
    if root == "/":
        dirs[:] = [d for d in dirs if d not in ("proc",)]
    for name in files:
        path = os.path.join(root, name)
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_size > (8 << 20):
                continue
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        scanned += 1
        check(path, data)
print(f"scanned={{scanned}}")
print("found=" + (";".join(found) if found else "nothing"))
"#
        ),
    );
    let r = env.run_with(
        &one_step("hunt", "python3 hunt.py", "[resources]\ntimeout = \"10m\""),
        &["--key", keys.join("signing.key").to_str().unwrap()],
    );
    r.assert_code(0);
    assert_eq!(r.value("found"), "nothing", "{r}");
    let scanned: u64 = r.value("scanned").parse().unwrap();
    assert!(scanned > 1000, "the hunt read only {scanned} files\n{r}");
}

#[test]
fn a_failed_job_gets_no_provenance() {
    let env = Env::new("noprov");
    let r = env.run(&one_step(
        "fails",
        "echo x > o.txt; exit 1",
        "[outputs]\npaths = [\"o.txt\"]",
    ));
    r.assert_code(1);
    for f in [
        "provenance.intoto.jsonl",
        "provenance.sigstore.json",
        "o.txt",
    ] {
        assert!(!r.out.join(f).exists(), "{f} written for a failed job");
    }
    assert_eq!(r.result()["status"], "failed");
    // A job that succeeds without outputs gets result.json only.
    let r = env.run(&one_step("nothing", "true", ""));
    r.assert_code(0);
    assert!(!r.out.join("provenance.intoto.jsonl").exists());
    assert!(r.out.join("result.json").exists() && r.out.join("job.log").exists());
}

#[test]
fn a_setuid_file_a_job_leaves_in_its_workspace_is_out_of_reach_of_other_host_users() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new("setuid-host");
    let marker = format!("31{}", rand_digits());
    // The job's mounts are nosuid in its own view only: on the host, the file it makes is a
    // real setuid file of the job's uid, and the job opens its workspace to everyone.
    let job = one_step(
        "suid",
        &format!(
            "cp /usr/bin/id /workspace/x && chmod 4755 /workspace/x && chmod 755 /workspace && sleep {marker}"
        ),
        "",
    );
    let (mut cmd, _out) = env.command(&job, &[]);
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Until the job has made the file and opened its workspace (its last step before the
    // sleep; the step's own shell carries the marker as well, so the sleep alone says little).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (dir, x, file) = loop {
        let dir = fs::read_dir(env.state.join("jobs"))
            .ok()
            .and_then(|d| d.flatten().map(|e| e.path()).find(|p| p.is_dir()));
        let ready = dir.as_ref().and_then(|d| {
            let open = fs::metadata(d.join("workspace")).ok()?.mode() & 0o777 == 0o755;
            let file = fs::metadata(d.join("workspace/x")).ok()?;
            (open && file.mode() & 0o4000 != 0).then_some(file)
        });
        if let (Some(dir), Some(file)) = (dir, ready) {
            let x = dir.join("workspace/x");
            break (dir, x, file);
        }
        assert!(
            Instant::now() < deadline,
            "the job never made its setuid file and opened its workspace"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let jobdir = fs::metadata(&dir).unwrap();
    if bulwark_tests::is_root() {
        // Only the job's own uid (through its group) passes; root owns the directory.
        assert_eq!(jobdir.mode() & 0o7777, 0o710);
        assert_eq!((jobdir.uid(), jobdir.gid()), (0, file.uid()));
        // Another host user cannot run it (before, it ran with the job's uid as its euid).
        // Through a shell: setpriv itself may find its command before it changes ids.
        let o = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(["/bin/sh", "-c", "exec \"$0\""])
            .arg(&x)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && stderr.contains("Permission denied"),
            "another user ran the job's setuid file: {} {stderr}",
            String::from_utf8_lossy(&o.stdout)
        );
    } else {
        eprintln!("part skipped: running the file as another user needs root");
        assert_eq!(jobdir.mode() & 0o7777, 0o700);
    }
    for pid in processes_with(&format!("sleep {marker}")) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let status = child.wait().unwrap();
    assert!(status.code().is_some(), "{status:?}");
}

#[test]
fn probe_reports_the_hosts_core_pattern_and_open_file_limit() {
    let env = Env::new("probe-host");
    let report = probe_report(&env);
    let line = |name: &str| {
        report
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} line\n{report}"))
            .to_string()
    };
    let pattern = fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let core = line("core-dumps");
    if pattern.starts_with('|') {
        assert!(
            core.contains("WARNING") && core.contains("pipes every crash"),
            "{core}"
        );
    } else {
        assert!(
            core.contains(" ok ") && core.contains("written to files"),
            "{core}"
        );
    }
    let file_max = fs::read_to_string("/proc/sys/fs/file-max").unwrap();
    let open = line("open-files");
    assert!(
        open.contains(&format!("fs.file-max {}", file_max.trim())),
        "{open}"
    );
}
