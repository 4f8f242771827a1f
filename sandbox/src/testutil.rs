//! Test helpers shared by this crate's unit tests.

use std::path::{Path, PathBuf};

/// A fresh directory `<temp>/<prefix>-<pid>-<random>`, removed with everything in it on drop,
/// so also when the test fails. Directories a test left without write or search permission
/// (or owned by another uid, when root) are made accessible again before the removal; what
/// that still cannot remove goes to `rm -rf --one-file-system`. Dereferences to its path.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn named(prefix: &str) -> TempDir {
        use std::io::Read;
        let mut random = [0u8; 4];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut random))
            .unwrap();
        let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{hex}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        TempDir(dir)
    }

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
