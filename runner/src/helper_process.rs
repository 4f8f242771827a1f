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
/// recorded is that of the helper that ran even if the installed file is replaced meanwhile.
#[derive(Debug)]
pub struct HelperBinary {
    file: File,
    path: PathBuf,
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
        let meta = file
            .metadata()
            .map_err(|e| format!("sandbox helper {}: {e}", path.display()))?;
        check_helper(&path, &meta, nix::unistd::geteuid().as_raw())?;
        Ok(HelperBinary { file, path })
    }

    /// sha256 of the helper binary, read from the descriptor that was executed.
    pub fn sha256(&self) -> std::io::Result<String> {
        use sha2::Digest;
        use std::os::unix::fs::FileExt;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        loop {
            let n = self.file.read_at(&mut buf, offset)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            offset += n as u64;
        }
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

    /// Starts the helper and hands it `spec` at once.
    pub fn spawn(&self, spec: &SandboxSpec, log: Stdio) -> Result<Child, String> {
        self.start(log)?.send(spec)
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
    /// The helper's standard error (the job's log), to be read from before the spec is sent,
    /// so that nothing after [`Started::send`] can fail and leave a running helper behind.
    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.as_mut()?.stderr.take()
    }

    /// Writes `spec` to the helper and closes the pipe; the helper then builds the sandbox.
    pub fn send(mut self, spec: &SandboxSpec) -> Result<Child, String> {
        let json =
            serde_json::to_vec(spec).map_err(|e| format!("encoding the sandbox spec: {e}"))?;
        let mut pipe = self.spec.take().ok_or("spec already sent")?;
        pipe.write_all(&json)
            .map_err(|e| format!("sending the sandbox spec: {e}"))?;
        drop(pipe);
        self.child
            .take()
            .ok_or_else(|| "helper already gone".to_string())
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
