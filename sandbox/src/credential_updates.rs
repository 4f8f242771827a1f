//! Newer credentials for a running job: init's side of the update channel.
//!
//! A trusted job's credentials are short-lived (an AWS session lasts at most an hour); a job
//! that runs longer would find them expired. The daemon exchanges the job's identity token
//! again before they expire and sends the result down the same path the first ones took:
//! daemon → `bulwark run` (which masks the new values in the log first) → the helper's standard
//! input, which the helper hands to init as this channel, one [`CredentialUpdate`] per line.
//!
//! Where init writes them: the job's view of `/run/credentials` is a tmpfs mount sealed
//! read-only with the rest of the root, and Landlock gives job processes read access at most.
//! Init holds a second mount of the same tmpfs, cloned before the seal and reachable by no path
//! (`open_tree`), and writes through it: each file beside the old one under a temporary name,
//! then renamed over it, so a reader sees the old contents or the new, never a mix. Only
//! credential directories the job was started with are written; init holds the new values
//! only while it writes them (zeroed as they are dropped), as it did the first ones.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{fchmod, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::secret_buf::SecretLines;
use crate::spec::{CredentialFile, CredentialUpdate, Event};

/// Longest update line: a handful of credentials, as hex.
pub const MAX_UPDATE_BYTES: usize = 512 << 10;

/// The update channel and where updates are written.
#[derive(Debug)]
pub struct CredentialUpdates {
    channel: Option<OwnedFd>,
    lines: SecretLines,
    /// The writable clone of the credentials' tmpfs (its root is `/run/credentials`).
    writer: OwnedFd,
}

impl CredentialUpdates {
    /// Updates read from `channel` and written through `writer`.
    pub fn new(channel: OwnedFd, writer: OwnedFd) -> CredentialUpdates {
        CredentialUpdates {
            channel: Some(channel),
            lines: SecretLines::new(MAX_UPDATE_BYTES),
            writer,
        }
    }

    /// The channel, while it is open: poll it for `POLLIN`.
    pub fn channel(&self) -> Option<BorrowedFd<'_>> {
        self.channel.as_ref().map(AsFd::as_fd)
    }

    /// The channel is readable (or closed): reads what is there and applies every complete
    /// update, reporting each on `status`. The end of the channel closes it quietly (the runner
    /// is done sending); an error closes it and says so.
    pub fn on_readable(&mut self, status: &mut File) {
        let Some(channel) = &self.channel else {
            return;
        };
        let mut chunk = zeroize::Zeroizing::new([0u8; 8192]);
        let n = match nix::unistd::read(channel, &mut chunk[..]) {
            Ok(0) => {
                self.channel = None;
                if self.lines.is_mid_line() {
                    report(
                        status,
                        &Event::CredentialUpdateFailed {
                            message: "the update channel ended in the middle of an update".into(),
                        },
                    );
                }
                return;
            }
            Ok(n) => n,
            Err(Errno::EINTR | Errno::EAGAIN) => return,
            Err(e) => return self.fail(status, format!("reading the update channel: {e}")),
        };
        let lines = match self.lines.take(&chunk[..n]) {
            Ok(lines) => lines,
            Err(e) => return self.fail(status, format!("the update channel: {e}")),
        };
        for line in lines {
            let update: CredentialUpdate = match serde_json::from_slice(line.as_bytes()) {
                Ok(u) => u,
                Err(e) => return self.fail(status, format!("an unreadable update: {e}")),
            };
            drop(line);
            let event = match write_update(self.writer.as_fd(), &update.files) {
                Ok(names) => Event::CredentialsUpdated { names },
                Err(message) => Event::CredentialUpdateFailed { message },
            };
            drop(update);
            report(status, &event);
        }
    }

    fn fail(&mut self, status: &mut File, message: String) {
        self.channel = None;
        report(status, &Event::CredentialUpdateFailed { message });
    }
}

/// Writes `files` into their directories under `root` (the writable clone): each beside the
/// old file, then renamed over it. Returns the directories written, in order. A directory the
/// job was not started with is refused before anything is written.
fn write_update(root: BorrowedFd<'_>, files: &[CredentialFile]) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = Vec::new();
    for f in files {
        if !crate::mount::plain_name(&f.dir) || !crate::mount::plain_name(&f.name) {
            return Err(format!("{:?}/{:?} is not a plain name", f.dir, f.name));
        }
        if !names.contains(&f.dir) {
            names.push(f.dir.clone());
        }
    }
    let mut dirs = Vec::new();
    for name in &names {
        let dir = openat(
            root,
            name.as_str(),
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
            Mode::empty(),
        )
        .map_err(|e| format!("credential {name}: not one this job was started with ({e})"))?;
        dirs.push(dir);
    }
    for f in files {
        let Some(i) = names.iter().position(|n| *n == f.dir) else {
            continue;
        };
        let dir = dirs[i].as_fd();
        let temp = format!(".{}.new", f.name);
        let written = (|| -> nix::Result<()> {
            fchmod(dir, Mode::from_bits_truncate(0o700))?;
            match unlinkat(dir, temp.as_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
            let fd = openat(
                dir,
                temp.as_str(),
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o400),
            )?;
            File::from(fd)
                .write_all(f.contents.as_bytes())
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
            renameat(dir, temp.as_str(), dir, f.name.as_str())
        })();
        // Read-only again whatever happened.
        let sealed = fchmod(dir, Mode::from_bits_truncate(0o500));
        written
            .and(sealed)
            .map_err(|e| format!("credential {}: writing {}: {e}", f.dir, f.name))?;
    }
    Ok(names)
}

fn report(status: &mut File, event: &Event) {
    let _ = writeln!(status, "{}", event.to_line());
}
