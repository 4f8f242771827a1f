//! Test support shared by the workspace's tests (this crate's unit tests, the runner's, and
//! the integration tests in `tests/`): not part of the sandbox's API. It lives here because
//! every other crate depends on this one.

// Test support: a directory that cannot be made is a failed test, so it panics.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// A fresh directory `<temp>/<prefix>-<pid>-<random>` (canonical), removed with everything in it on drop,
/// so also when the test fails (kept when `BULWARK_KEEP_TEST_DIRS` is set, for a look after a
/// failure). Directories a test left without write or search permission (the tool store's
/// read-only trees; or owned by another uid, when root) are made accessible again before the
/// removal; what that still cannot remove goes to `rm -rf --one-file-system`. Dereferences to
/// its path.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// `<temp>/bulwark-<tag>-<pid>-<random>`.
    pub fn new(tag: &str) -> TempDir {
        TempDir::named(&format!("bulwark-{tag}"))
    }

    /// `<temp>/<prefix>-<pid>-<random>`.
    pub fn named(prefix: &str) -> TempDir {
        use std::io::Read;
        let mut random = [0u8; 4];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut random))
            .unwrap();
        let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{hex}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        // Canonical, so a test comparing it with paths the code canonicalizes agrees.
        TempDir(dir.canonicalize().unwrap())
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("BULWARK_KEEP_TEST_DIRS").is_some() {
            return;
        }
        if std::fs::remove_dir_all(&self.0).is_ok() {
            return;
        }
        make_accessible(&self.0, 0);
        if std::fs::remove_dir_all(&self.0).is_ok() {
            return;
        }
        let _ = std::process::Command::new("rm")
            .args(["-rf", "--one-file-system", "--"])
            .arg(&self.0)
            .stdin(std::process::Stdio::null())
            .status();
    }
}

/// Gives every directory under `dir` (symlinks not followed) rwx for its owner, so that
/// `remove_dir_all` can list and empty it.
fn make_accessible(dir: &Path, depth: usize) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() || depth > 1000 {
        return;
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o700 != 0o700 {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o700));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            make_accessible(&entry.path(), depth + 1);
        }
    }
}

/// Held by this crate's unit tests that use many descriptors at once or lower the process's
/// descriptor limit: they run as threads of one process, so one lowering `RLIMIT_NOFILE`
/// while another holds hundreds of sockets would fail the first with EMFILE now and then.
pub static DESCRIPTOR_HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
