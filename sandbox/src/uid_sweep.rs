//! Killing every process of one job uid (`bulwark-sandbox --kill-uid UID`, root mode).
//!
//! In root mode every running job owns a host uid that nothing else on the host uses
//! (`runner/src/uids.rs`). The job itself is killed through its cgroup and its pid namespace;
//! but the runner also runs git as that uid before the job starts, outside any sandbox, and a
//! git compromised by a hostile repository could leave a process behind in a session of its
//! own, beyond the reach of git's process group. Such a process has the host's network and
//! `/tmp`, and would wait for the next job given that uid.
//!
//! Finding it by scanning `/proc` and killing pids one by one races with its forks and with pid
//! reuse (a pid read from `/proc` may name an unrelated process by the time it is signalled).
//! Instead this mode *becomes* the uid and calls `kill(-1, SIGKILL)`: the kernel then signals,
//! in one pass under its task-list lock (so no fork escapes it), every process the caller may
//! signal, and an unprivileged caller may signal exactly the processes whose real or saved uid
//! is its own. Which processes die is decided by the kernel's permission check, not by a list
//! that can go stale.
//!
//! That is safe only if the switch of ids really happened: `kill(-1)` by root would kill every
//! process on the host. So the runner starts this mode with the uid already set (std's
//! `CommandExt::uid`), and this code checks, before it signals anything, that its real,
//! effective and saved uids all equal the requested one, that it is not 0, and that its
//! effective capability set is empty (a process that kept `CAP_KILL` could signal anyone).
//! Any mismatch refuses without signalling.
//!
//! Alternatives rejected: `/bin/kill -KILL -1` run as the uid (the same system call, but its
//! safety would rest on nothing checking the ids at the moment of the kill); a freezer cgroup
//! around git (git's process group and this sweep suffice, and cgroup v1 and v2 and rootless
//! hosts would each need their own path).

use nix::sys::signal::{kill, Signal};
use nix::unistd::{getresgid, getresuid, Pid};

use crate::spec::Stage;

/// Entry point of `bulwark-sandbox --kill-uid UID`: exits 0 after the sweep, or reports a
/// `setup_failed` event on standard output and exits 125 without signalling anything.
pub fn kill_uid_main(uid: Option<&std::ffi::OsStr>) -> ! {
    let result = sweep(uid).map(|()| 0);
    crate::spec::exit_with(&mut std::io::stdout(), result)
}

fn sweep(arg: Option<&std::ffi::OsStr>) -> Result<(), Stage> {
    let uid: u32 = arg
        .and_then(|a| a.to_str())
        .and_then(|a| a.parse().ok())
        .ok_or(("arguments", "usage: bulwark-sandbox --kill-uid UID".into()))?;
    check_identity(uid)?;
    match kill(Pid::from_raw(-1), Signal::SIGKILL) {
        // ESRCH: no process of this uid was left, nothing to do.
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(("kill", e.to_string())),
    }
}

/// Refuses unless this process is `uid` through and through, unprivileged.
fn check_identity(uid: u32) -> Result<(), Stage> {
    if uid == 0 {
        return Err(("identity", "refusing to sweep uid 0".into()));
    }
    let ids = getresuid().map_err(|e| ("identity", e.to_string()))?;
    let gids = getresgid().map_err(|e| ("identity", e.to_string()))?;
    let all = [ids.real, ids.effective, ids.saved].map(|u| u.as_raw());
    if all != [uid; 3] {
        return Err((
            "identity",
            format!("started as uids {all:?}, not as uid {uid} alone: nothing was signalled"),
        ));
    }
    if [gids.real, gids.effective, gids.saved].map(|g| g.as_raw()) == [0; 3] {
        return Err(("identity", "still in group 0: nothing was signalled".into()));
    }
    let effective = caps::read(None, caps::CapSet::Effective)
        .map_err(|e| ("identity", format!("reading capabilities: {e}")))?;
    if !effective.is_empty() {
        return Err((
            "identity",
            format!("still holds capabilities {effective:?}: nothing was signalled"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_zero_is_never_swept() {
        let err = check_identity(0).unwrap_err();
        assert!(err.1.contains("uid 0"), "{err:?}");
    }

    #[test]
    fn a_caller_of_another_uid_signals_nothing() {
        // The test runs as some uid; asking for another one must refuse before any signal.
        let me = nix::unistd::getuid().as_raw();
        let other = if me == 4_000_000 {
            4_000_001
        } else {
            4_000_000
        };
        let err = sweep(Some(std::ffi::OsStr::new(&other.to_string()))).unwrap_err();
        assert_eq!(err.0, "identity", "{err:?}");
        assert!(err.1.contains("nothing was signalled"), "{err:?}");
    }

    #[test]
    fn a_missing_or_malformed_uid_is_a_usage_error() {
        for arg in [None, Some("abc"), Some("-1"), Some("")] {
            let err = sweep(arg.map(std::ffi::OsStr::new)).unwrap_err();
            assert_eq!(err.0, "arguments", "{arg:?}: {err:?}");
        }
    }
}
