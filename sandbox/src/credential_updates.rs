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
        let lines = match self.lines.read_from(channel.as_fd()) {
            Ok(Some(lines)) => lines,
            Ok(None) => {
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
            Err(e) => return self.fail(status, format!("reading the update channel: {e}")),
        };
        for line in lines {
            let update: CredentialUpdate = match serde_json::from_slice(line.as_bytes()) {
                Ok(u) => u,
                // Not serde's message: it may quote a value of the line.
                Err(e) => {
                    let why = format!(
                        "an unreadable update ({:?} error at column {})",
                        e.classify(),
                        e.column()
                    );
                    return self.fail(status, why);
                }
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

/// Writes `files` into their directories under `root` (the writable clone): every file is
/// first written beside the one it replaces under a temporary name, then all are renamed over
/// the old ones (so a failure while writing changes nothing the job sees, and leaves no
/// temporary file). Returns the directories written, in order. A directory the job was not
/// started with is refused before anything is written.
fn write_update(root: BorrowedFd<'_>, files: &[CredentialFile]) -> Result<Vec<String>, String> {
    // The files by directory, directories in the order they first appear.
    let mut groups: Vec<(&str, Vec<&CredentialFile>)> = Vec::new();
    for f in files {
        if !crate::mount::plain_name(&f.dir) || !crate::mount::plain_name(&f.name) {
            return Err(format!("{:?}/{:?} is not a plain name", f.dir, f.name));
        }
        match groups.iter_mut().find(|(dir, _)| *dir == f.dir) {
            Some((_, members)) => members.push(f),
            None => groups.push((f.dir.as_str(), vec![f])),
        }
    }
    let mut dirs = Vec::new();
    for (name, members) in groups {
        let dir = openat(
            root,
            name,
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
            Mode::empty(),
        )
        .map_err(|e| format!("credential {name}: not one this job was started with ({e})"))?;
        dirs.push((name, dir, members));
    }
    let temp = |f: &CredentialFile| format!(".{}.new", f.name);
    // Each of `dirs`' files in turn, with its directory.
    let each = |op: &dyn Fn(BorrowedFd<'_>, &CredentialFile) -> Result<(), String>| {
        dirs.iter()
            .try_for_each(|(_, d, members)| members.iter().try_for_each(|f| op(d.as_fd(), f)))
    };
    let mut result = dirs.iter().try_for_each(|(name, d, _)| {
        fchmod(d.as_fd(), Mode::from_bits_truncate(0o700))
            .map_err(|e| format!("credential {name}: making its directory writable: {e}"))
    });
    if result.is_ok() {
        result = each(&|d, f| {
            stage(d, &temp(f), f.contents.as_bytes())
                .map_err(|e| format!("credential {}: writing {}: {e}", f.dir, f.name))
        });
    }
    if result.is_ok() {
        result = each(&|d, f| {
            renameat(d, temp(f).as_str(), d, f.name.as_str())
                .map_err(|e| format!("credential {}: replacing {}: {e}", f.dir, f.name))
        });
    }
    if result.is_err() {
        // No temporary file stays behind (one never written, or already renamed: ENOENT).
        let _ = each(&|d, f| {
            let _ = unlinkat(d, temp(f).as_str(), UnlinkatFlags::NoRemoveDir);
            Ok(())
        });
    }
    // Read-only again whatever happened.
    for (name, d, _) in &dirs {
        let sealed = fchmod(d.as_fd(), Mode::from_bits_truncate(0o500));
        if result.is_ok() {
            result = sealed
                .map_err(|e| format!("credential {name}: making its directory read-only: {e}"));
        }
    }
    result.map(|()| dirs.iter().map(|(name, ..)| name.to_string()).collect())
}

/// Writes `contents` to a new file `name` (mode 0400) in `dir`, replacing a temporary file a
/// failed update left there; a file it could not write whole is removed.
fn stage(dir: BorrowedFd<'_>, name: &str, contents: &[u8]) -> nix::Result<()> {
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(e),
    }
    let fd = openat(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o400),
    )?;
    File::from(fd).write_all(contents).map_err(|e| {
        let _ = unlinkat(dir, name, UnlinkatFlags::NoRemoveDir);
        Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
    })
}

fn report(status: &mut File, event: &Event) {
    let _ = event.write_to(status);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(dir: &str, name: &str, contents: &str) -> CredentialFile {
        CredentialFile {
            dir: dir.into(),
            name: name.into(),
            contents: contents.into(),
        }
    }

    /// A credentials tree as the sandbox makes it: `aws/credentials` and `aws/expiration`,
    /// files 0400, directory 0500.
    fn tree(tag: &str) -> (crate::testutil::TempDir, OwnedFd) {
        let root = crate::testutil::TempDir::named(&format!("bulwark-cred-update-{tag}"));
        let aws = root.join("aws");
        std::fs::create_dir_all(&aws).unwrap();
        for (name, text) in [("credentials", "old-secret\n"), ("expiration", "old\n")] {
            std::fs::write(aws.join(name), text).unwrap();
            std::fs::set_permissions(aws.join(name), std::fs::Permissions::from_mode(0o400))
                .unwrap();
        }
        std::fs::set_permissions(&aws, std::fs::Permissions::from_mode(0o500)).unwrap();
        let fd = openat(
            nix::fcntl::AT_FDCWD,
            &*root,
            OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
            Mode::empty(),
        )
        .unwrap();
        (root, fd)
    }

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    /// Writable again, so that the directory's guard can remove it as any user.
    fn cleanup(root: &std::path::Path) {
        let _ = std::fs::set_permissions(root.join("aws"), std::fs::Permissions::from_mode(0o700));
    }

    #[test]
    fn an_update_replaces_the_files_in_place_read_only_with_nothing_left_beside_them() {
        let (root, fd) = tree("ok");
        let aws = root.join("aws");
        let inode = |p: &std::path::Path| {
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap())
        };
        let before = inode(&aws.join("credentials"));
        let names = write_update(
            fd.as_fd(),
            &[
                file("aws", "credentials", "new-secret\n"),
                file("aws", "expiration", "new\n"),
            ],
        )
        .unwrap();
        assert_eq!(names, ["aws"]);
        assert_eq!(
            std::fs::read_to_string(aws.join("credentials")).unwrap(),
            "new-secret\n"
        );
        assert_eq!(
            std::fs::read_to_string(aws.join("expiration")).unwrap(),
            "new\n"
        );
        assert_ne!(
            inode(&aws.join("credentials")),
            before,
            "replaced, not rewritten"
        );
        assert_eq!(mode(&aws.join("credentials")), 0o400);
        assert_eq!(mode(&aws), 0o500);
        let mut left: Vec<String> = std::fs::read_dir(&aws)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["credentials", "expiration"]);
        cleanup(&root);
    }

    /// A rename that fails (a directory where the file goes) fails the update, and no
    /// temporary file stays behind, neither the one renamed before nor the one after.
    #[test]
    fn an_update_that_fails_while_renaming_leaves_no_temporary_file() {
        use std::os::unix::fs::PermissionsExt;
        let (root, fd) = tree("rename-fails");
        let aws = root.join("aws");
        std::fs::set_permissions(&aws, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::create_dir(aws.join("sub")).unwrap();
        std::fs::set_permissions(&aws, std::fs::Permissions::from_mode(0o500)).unwrap();
        let e = write_update(
            fd.as_fd(),
            &[
                file("aws", "credentials", "new-secret\n"),
                file("aws", "sub", "s\n"),
                file("aws", "expiration", "new\n"),
            ],
        )
        .unwrap_err();
        assert!(e.contains("credential aws: replacing sub"), "{e}");
        let mut left: Vec<String> = std::fs::read_dir(&aws)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["credentials", "expiration", "sub"]);
        assert_eq!(mode(&aws), 0o500);
        std::fs::set_permissions(&aws, std::fs::Permissions::from_mode(0o700)).unwrap();
        cleanup(&root);
    }

    #[test]
    fn an_update_for_a_credential_the_job_lacks_or_with_a_path_in_a_name_changes_nothing() {
        let (root, fd) = tree("refused");
        let aws = root.join("aws");
        let e = write_update(
            fd.as_fd(),
            &[
                file("aws", "credentials", "new-secret\n"),
                file("gcp", "token", "t\n"),
            ],
        )
        .unwrap_err();
        assert!(
            e.contains("credential gcp: not one this job was started with"),
            "{e}"
        );
        for (dir, name) in [
            ("..", "x"),
            ("aws", "../x"),
            ("aws", ".credentials.new"),
            ("a/b", "x"),
        ] {
            let e = write_update(fd.as_fd(), &[file(dir, name, "v")]).unwrap_err();
            assert!(e.contains("is not a plain name"), "{dir}/{name}: {e}");
        }
        assert_eq!(
            std::fs::read_to_string(aws.join("credentials")).unwrap(),
            "old-secret\n"
        );
        assert_eq!(mode(&aws), 0o500);
        assert_eq!(std::fs::read_dir(&aws).unwrap().count(), 2);
        cleanup(&root);
    }

    #[test]
    fn updates_arrive_split_across_reads_and_a_bad_line_or_a_cut_one_is_reported() {
        let (root, fd) = tree("channel");
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let mut updates = CredentialUpdates::new(r, fd);
        let status_path = root.join("status");
        let mut status = File::create(&status_path).unwrap();
        let line = serde_json::to_string(&CredentialUpdate {
            files: vec![file("aws", "credentials", "split-secret\n")],
        })
        .unwrap()
            + "\n";
        let mut w = File::from(w);
        let (a, b) = line.as_bytes().split_at(line.len() / 2);
        w.write_all(a).unwrap();
        updates.on_readable(&mut status);
        w.write_all(b).unwrap();
        updates.on_readable(&mut status);
        assert_eq!(
            std::fs::read_to_string(root.join("aws/credentials")).unwrap(),
            "split-secret\n"
        );
        w.write_all(b"{\"files\": \"nope-secret\"}\n").unwrap();
        updates.on_readable(&mut status);
        assert!(updates.channel().is_none(), "a bad line closes the channel");
        let said = std::fs::read_to_string(&status_path).unwrap();
        assert!(
            said.contains(r#"{"event":"credentials_updated","names":["aws"]}"#),
            "{said}"
        );
        assert!(said.contains("an unreadable update"), "{said}");
        assert!(
            !said.contains("nope-secret"),
            "the line is never quoted: {said}"
        );
        cleanup(&root);
    }
}
