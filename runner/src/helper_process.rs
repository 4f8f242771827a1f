//! Starting the sandbox helper: the `bulwark-sandbox` binary installed next to `bulwark`, with
//! an empty environment, the [`SandboxSpec`] written to its standard input, status events on its
//! standard output and the job's log on its standard error (see `bulwark_sandbox::helper`).
//!
//! The helper runs as root in root mode, so it must be exactly as trustworthy as `bulwark`
//! itself: it is taken only from the directory of the running `bulwark` (never from `PATH`),
//! and refused when it is not a regular file owned by root or by us, or when anyone else may
//! write to it.
//!
//! Call it from the thread that lives as long as the job (the main thread): the helper's
//! parent-death signal fires when the thread that spawned it exits.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use bulwark_sandbox::spec::SandboxSpec;

/// The helper binary, opened once: the job execs exactly this file (through
/// `/proc/self/fd`), and provenance hashes the same open file afterwards, so the digest
/// recorded is that of the helper that ran even if a new file is installed at its path (by
/// rename, as package managers do) while the job runs.
///
/// Replaced is not the only way a file changes: its owner (root, or the runner's own user)
/// could also rewrite it in place. The kernel usually refuses writes to it while any process
/// runs it (`ETXTBSY`), so a change falls between our open and the exec, or after the job.
/// Either one moves the file's modification time, which is recorded at open (with the size)
/// and checked around the hashing: a helper changed since the job started is an error, not a
/// wrong digest. (Not the change time: a rename over the path or a new hard link moves that
/// too, and must not fail the jobs that run meanwhile.) Filesystems with fine-grained
/// timestamps (ext4, xfs, btrfs and tmpfs from Linux 6.13) give a file that was just stat'ed
/// a new modification time on its next write; elsewhere a rewrite within the same clock tick,
/// a few milliseconds, can go unseen. The file's owner could also set the time back by hand,
/// but the owner is as trusted as this binary.
#[derive(Debug)]
pub struct HelperBinary {
    file: File,
    path: PathBuf,
    /// Modification time (seconds, nanoseconds) and size when opened.
    opened: (i64, i64, u64),
}

impl HelperBinary {
    /// Opens `bulwark-sandbox` in the directory of the running `bulwark`, after checking it.
    pub fn open() -> Result<HelperBinary, String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("locating the bulwark binary: {e}"))?;
        let dir = exe
            .parent()
            .ok_or_else(|| format!("{} has no parent directory", exe.display()))?;
        let path = dir.join(bulwark_sandbox::helper::HELPER_BINARY);
        // Opened without following a symlink, then checked through the descriptor: what is
        // checked is what runs.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&path)
            .map_err(|e| {
                format!(
                    "sandbox helper {}: {e}; install bulwark-sandbox from the same build next to \
                     bulwark",
                    path.display()
                )
            })?;
        HelperBinary::checked(file, path)
    }

    fn checked(file: File, path: PathBuf) -> Result<HelperBinary, String> {
        let meta = file
            .metadata()
            .map_err(|e| format!("sandbox helper {}: {e}", path.display()))?;
        check_helper(&path, &meta, nix::unistd::geteuid().as_raw())?;
        Ok(HelperBinary {
            file,
            path,
            opened: change_stamp(&meta),
        })
    }

    /// sha256 of the helper binary, read from the descriptor that was executed; an error if
    /// the file changed since it was opened (then nobody can say which bytes ran).
    pub fn sha256(&self) -> Result<String, String> {
        use sha2::Digest;
        use std::os::unix::fs::FileExt;
        let io =
            |e: std::io::Error| format!("hashing the sandbox helper {}: {e}", self.path.display());
        let unchanged = |when: &str| -> Result<(), String> {
            let now = change_stamp(&self.file.metadata().map_err(io)?);
            if now == self.opened {
                return Ok(());
            }
            Err(format!(
                "the sandbox helper {} was changed {when} (its modification time or size \
                 moved), so the provenance cannot name the helper that ran; do not modify \
                 bulwark-sandbox in place while jobs run (install a new file by rename), then \
                 run the job again",
                self.path.display()
            ))
        };
        unchanged("after this job started it")?;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        loop {
            let n = self.file.read_at(&mut buf, offset).map_err(io)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            offset += n as u64;
        }
        unchanged("while it was being hashed")?;
        Ok(crate::outputs::hex(&h.finalize()))
    }

    /// Starts the helper, which waits for its spec: the runner prepares the job's directories
    /// and cgroups while the helper is being exec'd and linked (two CPUs do the two at once),
    /// then hands the spec over with [`Started::send`]. `log` is where the job's output goes.
    pub fn start(&self, log: Stdio) -> Result<Started, String> {
        let (spec_read, spec_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| format!("spec pipe: {e}"))?;
        let child = Command::new(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
            .arg0(bulwark_sandbox::helper::HELPER_BINARY)
            .env_clear()
            .stdin(Stdio::from(spec_read))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting the sandbox helper {}: {e}", self.path.display()))?;
        Ok(Started {
            child: Some(child),
            spec: Some(File::from(spec_write)),
        })
    }

    /// Runs this helper in its ownership mode (`--ownership`, subuid mode: see
    /// `bulwark_sandbox::subid`) and waits for it. The error carries the helper's reason.
    pub fn run_ownership(
        &self,
        spec: &bulwark_sandbox::subid::OwnershipSpec,
    ) -> Result<(), String> {
        let json =
            serde_json::to_vec(spec).map_err(|e| format!("encoding the ownership spec: {e}"))?;
        let mut cmd = self.mode_command("--ownership");
        cmd.stdin(Stdio::piped());
        self.run_mode(cmd, Some(&json), "the ownership spec")
    }

    /// Kills every process of the job uid `uid` (root mode): runs this helper as that uid, in
    /// its `--kill-uid` mode, which checks it really is that uid alone and unprivileged before
    /// it calls `kill(-1, SIGKILL)` (see `bulwark_sandbox::uid_sweep`). The error carries the
    /// helper's reason; nothing was signalled then.
    pub fn kill_uid(&self, uid: u32) -> Result<(), String> {
        if uid == 0 {
            return Err("refusing to sweep uid 0".into());
        }
        let mut cmd = self.mode_command("--kill-uid");
        // As root, std also drops every supplementary group before the exec.
        cmd.arg(uid.to_string())
            .uid(uid)
            .gid(uid)
            .stdin(Stdio::null());
        self.run_mode(cmd, None, "")
    }

    /// The path that execs this helper (through the descriptor that was checked), for a
    /// child of this process.
    pub fn exec_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// This helper, in one of its modes, with an empty environment.
    fn mode_command(&self, mode: &str) -> Command {
        let mut cmd = Command::new(self.exec_path());
        cmd.arg0(bulwark_sandbox::helper::HELPER_BINARY)
            .arg(mode)
            .env_clear();
        cmd
    }

    /// Runs `cmd` (from [`HelperBinary::mode_command`]), writes `input` (`what`) to it, waits;
    /// a failure carries the reason the helper reported.
    fn run_mode(&self, mut cmd: Command, input: Option<&[u8]>, what: &str) -> Result<(), String> {
        use std::io::Read;
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting the sandbox helper {}: {e}", self.path.display()))?;
        let written = match (input, child.stdin.take()) {
            (Some(bytes), Some(mut w)) => Some(w.write_all(bytes)),
            _ => None,
        };
        let mut said = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = out.take(64 * 1024).read_to_string(&mut said);
        }
        let status = child
            .wait()
            .map_err(|e| format!("waiting for the sandbox helper: {e}"))?;
        if status.success() {
            return Ok(());
        }
        Err(match (setup_failure(&said), written) {
            (Some(r), _) => r,
            (None, Some(Err(e))) => format!("sending {what}: {e} ({status})"),
            (None, _) => format!("the sandbox helper ended with {status} without saying why"),
        })
    }

    /// Starts the helper and hands it `spec` at once.
    pub fn spawn(&self, spec: &SandboxSpec, log: Stdio) -> Result<Child, String> {
        Ok(self.start(log)?.send(spec)?.0)
    }
}

/// A helper that was started and waits for its spec. Dropped without [`Started::send`] (the
/// job was refused while it was being prepared), the helper reads end-of-file instead of a
/// spec and is killed and reaped: it never ran anything.
#[derive(Debug)]
pub struct Started {
    child: Option<Child>,
    spec: Option<File>,
}

impl Started {
    /// The helper's process id (unreaped until `send`'s child is waited for, or polled with
    /// `try_wait` once it has exited; the runner uses it only before `send`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The helper's standard error (the job's log), to be read from before the spec is sent,
    /// so that nothing after [`Started::send`] can fail and leave a running helper behind.
    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.as_mut()?.stderr.take()
    }

    /// Writes `spec` to the helper, one line, and closes the pipe; the helper then builds
    /// the sandbox. With `credential_updates` the pipe stays open and is returned: it is
    /// init's credential update channel once the sandbox is ready.
    pub fn send(mut self, spec: &SandboxSpec) -> Result<(Child, Option<File>), String> {
        // Zeroed when dropped, and when it grows: a trusted job's spec carries its
        // credentials.
        let json = bulwark_sandbox::secret_buf::SecretBuf::json_line(spec)
            .map_err(|e| format!("encoding the sandbox spec: {e}"))?;
        let mut pipe = self.spec.take().ok_or("spec already sent")?;
        if let Err(e) = pipe.write_all(json.as_bytes()) {
            drop(pipe);
            return Err(self.stopped_early(&format!("sending the sandbox spec: {e}")));
        }
        // Kept open exactly when the helper hands the pipe on to init.
        let updates = spec.takes_credential_updates().then_some(pipe);
        let child = self
            .child
            .take()
            .ok_or_else(|| "helper already gone".to_string())?;
        Ok((child, updates))
    }

    /// The spec could not be written: the helper has stopped reading (it exited or was
    /// killed). Reaps it and says why from what it reported, instead of a bare broken pipe.
    fn stopped_early(&mut self, what: &str) -> String {
        let Some(mut child) = self.child.take() else {
            return what.to_string();
        };
        // A helper that closed its end of the spec pipe is on its way out, most likely still
        // writing why: let it finish (briefly) before killing it, or its reason is lost.
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
        while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = child.kill();
        let status = child.wait();
        let mut said = String::new();
        if let Some(out) = child.stdout.take() {
            // Non-blocking, so that nothing but the dead helper's own end-of-file decides when
            // this read ends; bounded: the helper wrote at most a line or two before it stopped.
            let _ = nix::fcntl::fcntl(
                &out,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            );
            let _ =
                std::io::Read::read_to_string(&mut std::io::Read::take(out, 64 * 1024), &mut said);
        }
        let reason = setup_failure(&said);
        let status = status.map_or_else(|e| format!("unknown status ({e})"), |s| s.to_string());
        match reason {
            Some(r) => format!("{what}; the sandbox helper stopped first ({status}): {r}"),
            None => {
                format!("{what}; the sandbox helper stopped first ({status}) without saying why")
            }
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        drop(self.spec.take());
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The first `setup_failed` event among the helper's status lines, as "stage: message".
fn setup_failure(said: &str) -> Option<String> {
    said.lines().find_map(
        |line| match serde_json::from_str::<bulwark_sandbox::spec::Event>(line) {
            Ok(bulwark_sandbox::spec::Event::SetupFailed { stage, message }) => {
                Some(format!("{stage}: {message}"))
            }
            _ => None,
        },
    )
}

fn change_stamp(meta: &std::fs::Metadata) -> (i64, i64, u64) {
    (meta.mtime(), meta.mtime_nsec(), meta.size())
}

fn check_helper(path: &Path, meta: &std::fs::Metadata, euid: u32) -> Result<(), String> {
    if !meta.file_type().is_file() {
        return Err(format!(
            "sandbox helper {} is not a regular file; install bulwark-sandbox from the same \
             build next to bulwark",
            path.display()
        ));
    }
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(format!(
            "sandbox helper {} is owned by uid {}, not by root or by the user running bulwark; \
             fix its owner",
            path.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o6000 != 0 {
        return Err(format!(
            "sandbox helper {} has the set-user-id or set-group-id bit (mode {:o}); it must \
             not: chmod ug-s it",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "sandbox helper {} is writable by group or others (mode {:o}); chmod go-w it",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn check(path: &Path, euid: u32) -> Result<(), String> {
        check_helper(path, &std::fs::symlink_metadata(path).unwrap(), euid)
    }

    #[test]
    fn a_helper_changed_after_it_was_opened_gets_no_digest() {
        let dir = crate::tools::testutil::TempDir::new("helper-digest");
        let path = dir.path().join("bulwark-sandbox");
        std::fs::write(&path, b"#!/bin/true\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let helper = HelperBinary::checked(File::open(&path).unwrap(), path.clone()).unwrap();
        // sha256 of "#!/bin/true\n"
        let expected = {
            use sha2::Digest;
            crate::outputs::hex(&sha2::Sha256::digest(b"#!/bin/true\n"))
        };
        assert_eq!(helper.sha256().unwrap(), expected);
        // A new helper installed by rename (as package managers do), and a hard link: the
        // open file keeps its bytes and its digest, and is not reported as changed.
        let new = dir.path().join("bulwark-sandbox.new");
        std::fs::write(&new, b"#!/bin/false\n").unwrap();
        std::fs::hard_link(&path, dir.path().join("link")).unwrap();
        std::fs::rename(&new, &path).unwrap();
        assert_eq!(helper.sha256().unwrap(), expected);
        // Rewritten in place (same inode, the descriptor sees the new bytes).
        let path = dir.path().join("link");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"echo swapped\n").unwrap();
        drop(f);
        let err = helper.sha256().unwrap_err();
        assert!(
            err.contains("was changed after this job started it"),
            "{err}"
        );
    }

    #[test]
    fn a_helper_anyone_else_can_write_or_that_is_not_a_file_is_refused() {
        let dir = crate::tools::testutil::TempDir::new("helper");
        let helper = dir.path().join("bulwark-sandbox");
        let me = nix::unistd::geteuid().as_raw();
        std::fs::write(&helper, b"#!/bin/false\n").unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        check(&helper, me).unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o775)).unwrap();
        let err = check(&helper, me).unwrap_err();
        assert!(err.contains("writable by group or others"), "{err}");
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o757)).unwrap();
        assert!(check(&helper, me).is_err());
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let err = check(&helper, me).unwrap_err();
        assert!(err.contains("set-user-id"), "{err}");
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        if me != 0 {
            // Owned by us, checked as if we were someone else (and not root).
            let err = check(&helper, me + 1).unwrap_err();
            assert!(err.contains("owned by uid"), "{err}");
        }
        std::os::unix::fs::symlink(&helper, dir.path().join("link")).unwrap();
        let err = check(&dir.path().join("link"), me).unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
    }
}
