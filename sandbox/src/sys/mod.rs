//! The only place in Bulwark that holds `unsafe`.
//!
//! Everything here is a thin wrapper around a system call that has no safe wrapper in `nix`,
//! `caps`, `landlock` or `seccompiler`, or whose safe use depends on a process-level invariant
//! (single-threadedness for `fork`). Each block states the invariant it relies on; callers get a
//! safe function with that invariant documented as a precondition where it cannot be checked.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::unistd::{ForkResult, Pid};

/// Result of [`fork_single_threaded`].
#[derive(Debug)]
pub enum Forked {
    /// In the parent, with the child's pid.
    Parent(Pid),
    /// In the child.
    Child,
}

/// Forks the calling process.
///
/// Precondition (checked): the process has exactly one thread. The sandbox helper and the
/// in-sandbox init never start threads, and `threads_in_this_process` reads the kernel's count.
pub fn fork_single_threaded() -> io::Result<Forked> {
    let threads = threads_in_this_process()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "refusing to fork: the process has {threads} threads, the sandbox helper must have one"
        )));
    }
    // SAFETY: `fork` is unsound only when other threads may hold locks (allocator, stdio) that
    // the child would inherit locked. We verified just above that this process has exactly one
    // thread, and nothing between that check and this call can start one.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        ForkResult::Child => Ok(Forked::Child),
    }
}

/// Number of threads in the calling process, from `/proc/self/stat` (field 20).
pub fn threads_in_this_process() -> io::Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The command name (field 2) may contain spaces and parentheses; fields after the last ')'
    // are well formed. After ')' come: state(3) ppid(4) ... num_threads(20).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("malformed /proc/self/stat"))?;
    rest.split_whitespace()
        .nth(17)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("malformed /proc/self/stat"))
}

/// Closes every file descriptor numbered `first` or above.
pub fn close_fds_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range only closes descriptors; it touches no memory. The callers are the
    // helper at its start (before it has opened anything), and a job process or confined
    // program right before exec, whose `OwnedFd`s and `File`s at or above `first` are never
    // used or dropped afterwards: they exec, or leave with `exit_now` (no destructors). A
    // surviving owner dropped later would close a number already closed (std aborts on that
    // in debug builds) or reused by then.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    // A kernel before 5.9, or a container's seccomp profile that refuses the call: close them
    // one by one, as listed in /proc/self/fd (the listing's own descriptor included, which
    // then fails with EBADF when the listing closes it: harmless).
    if !matches!(err.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) {
        return Err(err);
    }
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|fd: &i32| u32::try_from(*fd).is_ok_and(|fd| fd >= first))
        .collect();
    for fd in fds {
        // SAFETY: as above: the caller owns no descriptor at or above `first` it will use again.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// A descriptor for process `pid` (`pidfd_open`, Linux 5.3): it keeps naming that process
/// after it exits, even once the pid is reused by another.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open reads no memory of ours; on success it returns a new descriptor that
    // nothing else owns, which the OwnedFd below takes sole ownership of.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd =
        i32::try_from(rc).map_err(|_| io::Error::other("pidfd_open: descriptor out of range"))?;
    // SAFETY: `fd` was just returned by the kernel and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `signal` to the process `pidfd` names (`pidfd_send_signal`, Linux 5.1); ESRCH once it
/// has exited, whoever has its pid now.
pub fn pidfd_send_signal(pidfd: &OwnedFd, signal: i32) -> io::Result<()> {
    // SAFETY: the info pointer is null (the kernel fills in the usual kill() info) and flags
    // are 0; `pidfd` is a live descriptor borrowed for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `struct loop_info64` from `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` from `<linux/loop.h>` (`LOOP_CONFIGURE`, Linux 5.8).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
/// Detach the device by itself once nothing holds it open or mounted any more.
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// Attaches the open file `backing` to a free loop device that detaches itself once its
/// last user is gone (`LO_FLAGS_AUTOCLEAR`): the returned descriptor, then whatever mounts
/// it. Returns the device's path and that descriptor. Two callers may be handed the same
/// free device; the one that configures it second gets EBUSY and asks again.
pub fn loop_attach(backing: &std::fs::File) -> io::Result<(std::path::PathBuf, OwnedFd)> {
    use std::os::unix::fs::OpenOptionsExt;
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/loop-control")
        .map_err(|e| io::Error::new(e.kind(), format!("opening /dev/loop-control: {e}")))?;
    let backing_fd = u32::try_from(backing.as_raw_fd())
        .map_err(|_| io::Error::other("loop backing descriptor out of range"))?;
    let mut last = io::Error::other("no free loop device");
    for _ in 0..32 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and reads or writes no memory of ours;
        // `control` is a live descriptor for the duration of the call.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("asking /dev/loop-control for a free loop device: {e}"),
            ));
        }
        let path = std::path::PathBuf::from(format!("/dev/loop{n}"));
        let device = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(d) => d,
            // devtmpfs makes the node as the device appears; a moment's race is retried.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                last = io::Error::new(e.kind(), format!("opening {}: {e}", path.display()));
                std::thread::sleep(std::time::Duration::from_millis(5));
                continue;
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("opening {}: {e}", path.display()),
                ))
            }
        };
        // SAFETY: an all-zero loop_config is valid (no offset, no size limit, no name, no
        // encryption); only plain integer fields are set below.
        let mut config: LoopConfig = unsafe { std::mem::zeroed() };
        config.fd = backing_fd;
        config.info.flags = LO_FLAGS_AUTOCLEAR;
        // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which `config` is (repr(C),
        // the kernel's layout), alive and unaliased for the call; `device` and `backing`
        // are live descriptors.
        let rc = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config) };
        if rc == 0 {
            return Ok((path, OwnedFd::from(device)));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(io::Error::new(
                e.kind(),
                format!("attaching the job's disk image to {}: {e}", path.display()),
            ));
        }
        last = io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    }
    Err(io::Error::new(
        last.kind(),
        format!("no loop device could be attached in 32 tries (last: {last})"),
    ))
}

/// Returns the Landlock ABI version the running kernel supports (0 when unsupported or
/// disabled). The `landlock` crate keeps this private on purpose; we need it only to report it
/// (`probe`, `result.json`) and to pick the ABI whose full feature set we then hard-require.
pub fn landlock_abi_version() -> u32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag, the kernel reads no
    // memory and only returns the ABI version (or an error).
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(v).unwrap_or(0)
}

/// Brings the loopback interface of the current network namespace up.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; on success we take sole ownership of the new
    // descriptor, which is closed when the OwnedFd drops.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads ifr_name and writes ifr_ifru.ifru_flags inside `req`, which is
    // a valid, exclusively borrowed ifreq for the duration of the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled ifru_flags in the call above; reading that union field is valid.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ends the calling process at once, without running destructors or atexit handlers.
/// Used in a forked child whose exec failed: it must not unwind into the parent's code.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is always safe to call; it never returns.
    unsafe { libc::_exit(code) }
}

/// The highest capability number the running kernel knows.
pub fn cap_last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Whether one capability is in the bounding set (`PR_CAPBSET_READ`); `false` for a
/// capability the kernel does not know.
pub fn capbset_read(cap: u32) -> io::Result<bool> {
    // SAFETY: prctl(PR_CAPBSET_READ, cap) takes integers only and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) };
    match rc {
        1 => Ok(true),
        0 => Ok(false),
        _ => {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// Drops one capability from the bounding set (`PR_CAPBSET_DROP`).
pub fn capbset_drop(cap: u32) -> io::Result<()> {
    // SAFETY: prctl(PR_CAPBSET_DROP, cap) takes integers only and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        // EINVAL: the kernel does not know this capability; nothing to drop.
        if e.raw_os_error() == Some(libc::EINVAL) {
            Ok(())
        } else {
            Err(e)
        }
    }
}

/// Clears the ambient capability set (`PR_CAP_AMBIENT_CLEAR_ALL`).
pub fn ambient_clear_all() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Mount attribute bits of `mount_setattr(2)` (linux/mount.h).
pub mod mount_attr {
    /// Read-only.
    pub const RDONLY: u64 = 0x1;
    /// Ignore set-user-id and set-group-id bits and file capabilities.
    pub const NOSUID: u64 = 0x2;
    /// No device access.
    pub const NODEV: u64 = 0x4;
    /// No execution.
    pub const NOEXEC: u64 = 0x8;
}

/// `struct mount_attr` (linux/mount.h, `MOUNT_ATTR_SIZE_VER0`).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Adds the [`mount_attr`] bits `set` to the mount at `path`, and with `recursive` to every
/// mount below it, in one `mount_setattr(2)` call (Linux 5.12). Nothing is cleared, so flags a
/// less privileged mount namespace may not clear (those the host set are locked) stay as they
/// are; a final symlink is not followed.
pub fn mount_setattr_add(path: &std::path::Path, set: u64, recursive: bool) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let mut flags = libc::AT_SYMLINK_NOFOLLOW as libc::c_uint;
    if recursive {
        flags |= 0x8000; // AT_RECURSIVE
    }
    // SAFETY: `c_path` is a NUL-terminated string and `attr` a properly laid out
    // `struct mount_attr` whose size is passed; both outlive the call, and the kernel only
    // reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A detached copy of the mount at `path` (`open_tree(2)` with `OPEN_TREE_CLONE`, Linux 5.2),
/// as a descriptor: reachable by no path, keeping the flags the mount has now (flags set on
/// `path` later, such as read-only, do not reach it), gone when the descriptor is closed.
/// Needs `CAP_SYS_ADMIN` in the mount namespace's user namespace.
pub fn open_tree_clone(path: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let flags = OPEN_TREE_CLONE
        | libc::O_CLOEXEC as libc::c_uint
        | libc::AT_SYMLINK_NOFOLLOW as libc::c_uint;
    // SAFETY: `c_path` is a NUL-terminated string that outlives the call, which only reads
    // it; on success the return value is a new descriptor that nothing else owns.
    let rc = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c_path.as_ptr(), flags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(rc).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: `fd` was just returned by the kernel as a new descriptor owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets every signal's disposition back to the default, as a freshly booted process has it.
///
/// A caught signal is reset by `execve` anyway; an *ignored* one stays ignored across it. Rust's
/// runtime ignores SIGPIPE in the runner and the helper, and whoever started the runner may
/// have ignored others: without this a job's `yes | head -1` would report "Broken pipe"
/// instead of being stopped by the signal, unlike on any ordinary machine. Uses the raw
/// `rt_sigaction` system call because glibc refuses to touch the two real-time signals it
/// reserves for itself (32 and 33), which can be inherited ignored too.
pub fn reset_signal_dispositions() -> io::Result<()> {
    // The kernel's `struct sigaction` on x86_64 and aarch64: handler, flags, restorer, then
    // the mask (`_NSIG / 8` = 8 bytes). Architectures without the restorer field (riscv64)
    // read the first 24 of these 32 bytes, all zero, which means the same: SIG_DFL, no flags,
    // empty mask.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let dfl = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no code of ours in signal context and the kernel
        // reads exactly `size_of::<KernelSigaction>()` bytes from a live stack value whose
        // layout matches its `struct sigaction` (sigsetsize 8 is the kernel's `_NSIG / 8`);
        // the old action is not asked for (null).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &dfl as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            )
        };
        if rc != 0 {
            return Err(io::Error::other(format!(
                "resetting the disposition of signal {sig}: {}",
                io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

/// Moves up to `len` bytes from `from` to `to` inside the kernel (`splice(2)`), where one of
/// the two is a pipe and the other a socket (or a pipe). Non-blocking on the pipe side
/// (`SPLICE_F_NONBLOCK`); the socket side follows the socket's own `O_NONBLOCK`. Returns the
/// bytes moved; 0 means end of file on `from` (or `len` was 0).
///
/// Writing to a socket whose peer is gone raises SIGPIPE like `write(2)` does: callers run
/// with SIGPIPE ignored (Rust's runtime sets that up) or are a namespace's pid 1 (which the
/// kernel never sends a default-action signal). (nix's wrapper is safe; it is here beside
/// the other system-call wrappers of the egress relays.)
pub fn splice(
    from: std::os::fd::BorrowedFd<'_>,
    to: std::os::fd::BorrowedFd<'_>,
    len: usize,
) -> io::Result<usize> {
    use nix::fcntl::SpliceFFlags;
    nix::fcntl::splice(
        from,
        None,
        to,
        None,
        len,
        SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
    )
    .map_err(io::Error::from)
}

/// The value of the extended attribute `name` of `path` (following symlinks), or `None` when
/// the file has no such attribute or the filesystem keeps none. At most 256 bytes are read:
/// callers look at short flags such as systemd's `trusted.delegate`.
pub fn getxattr(path: &std::path::Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let c_name =
        std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buf = [0u8; 256];
    // SAFETY: both strings are NUL-terminated and outlive the call; the kernel writes at most
    // `buf.len()` bytes into `buf`, which is valid for writes of that length.
    let n = unsafe {
        libc::getxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n >= 0 {
        return Ok(Some(buf[..n as usize].to_vec()));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENODATA) | Some(libc::EOPNOTSUPP) => Ok(None),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_count_of_a_test_process_is_read_from_proc() {
        // The test harness runs tests on threads, so there is at least one.
        assert!(threads_in_this_process().unwrap() >= 1);
    }

    #[test]
    fn fork_is_refused_in_a_multithreaded_process() {
        let _t = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(300)));
        let err = fork_single_threaded().unwrap_err();
        assert!(err.to_string().contains("threads"), "{err}");
    }

    #[test]
    fn splice_moves_socket_bytes_through_a_pipe_and_reports_end_of_file() {
        use std::io::{Read, Write};
        use std::os::fd::AsFd;
        use std::os::unix::net::UnixStream;
        let (mut a, b) = UnixStream::pair().unwrap();
        let (c, mut d) = UnixStream::pair().unwrap();
        let (pr, pw) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        a.write_all(b"spliced").unwrap();
        assert_eq!(splice(b.as_fd(), pw.as_fd(), 1 << 16).unwrap(), 7);
        assert_eq!(splice(pr.as_fd(), c.as_fd(), 7).unwrap(), 7);
        let mut got = [0u8; 7];
        d.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"spliced");
        // Empty and open: would block (the pipe side never waits).
        b.set_nonblocking(true).unwrap();
        let err = splice(b.as_fd(), pw.as_fd(), 1 << 16).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
        a.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(splice(b.as_fd(), pw.as_fd(), 1 << 16).unwrap(), 0);
    }
}
