//! Small filesystem helpers shared by the runner: atomic writes and removing trees a job made.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Writes `bytes` to `path` under a temporary name in the same directory, fsyncs it and
/// renames it over `path`: readers see the old file or the whole new one, also after a crash.
/// For what must survive a power loss (signed provenance, keys, the tool store's records).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_renamed(path, bytes, true)
}

/// Like [`write_atomic`] without the fsync: readers still never see a partial file while the
/// system runs, but after a power loss the file may be missing or empty. For the run's own
/// records (`result.json`), which are as durable as the outputs next to them: only the signed
/// provenance is made durable, and its digests expose anything a crash lost.
pub fn write_replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_renamed(path, bytes, false)
}

fn write_renamed(path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.bulwark-tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        if sync {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes a directory tree that a job wrote, without following symlinks, first making any
/// directory the job left unreadable or unwritable accessible again. A job controls the shape
/// of the tree: one deeper than this walk can handle (path length, descriptors) is handed to
/// `rm -rf --one-file-system`, which walks any depth with `openat`.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match remove_tree_walk(path, 0) {
        Ok(()) => Ok(()),
        Err(e) => {
            let status = std::process::Command::new("rm")
                .args(["-rf", "--one-file-system", "--"])
                .arg(path)
                .stdin(std::process::Stdio::null())
                .status();
            match status {
                Ok(s) if s.success() && fs::symlink_metadata(path).is_err() => Ok(()),
                _ => Err(e),
            }
        }
    }
}

/// Deepest level [`remove_tree`] walks itself.
const MAX_WALK_DEPTH: usize = 256;

fn remove_tree_walk(path: &Path, depth: usize) -> io::Result<()> {
    if depth > MAX_WALK_DEPTH {
        return Err(io::Error::other("tree too deep"));
    }
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    // An empty directory (the common case for a job's /tmp) goes in one call.
    if fs::remove_dir(path).is_ok() {
        return Ok(());
    }
    if meta.permissions().mode() & 0o700 != 0o700 {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
    }
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        remove_tree_walk(&entry.path(), depth + 1)?;
    }
    fs::remove_dir(path)
}

/// Reads random bytes from the kernel and returns them as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_err()
    {
        // /dev/urandom always exists on Linux; fall back to time and pid rather than fail.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let seed = t ^ (u128::from(std::process::id()) << 64);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Kind of a directory entry, from `fstatat(AT_SYMLINK_NOFOLLOW)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// FIFO.
    Fifo,
    /// Socket.
    Socket,
    /// Character or block device.
    Device,
}

impl Kind {
    /// From `st_mode`.
    pub fn of(mode: u32) -> Kind {
        match mode & libc_s_ifmt() {
            0o100000 => Kind::File,
            0o040000 => Kind::Dir,
            0o120000 => Kind::Symlink,
            0o010000 => Kind::Fifo,
            0o140000 => Kind::Socket,
            _ => Kind::Device,
        }
    }

    /// Human name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "regular file",
            Kind::Dir => "directory",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
            Kind::Device => "device node",
        }
    }
}

const fn libc_s_ifmt() -> u32 {
    0o170000
}

/// One entry of a directory read through a descriptor.
#[derive(Debug)]
pub struct Entry {
    /// File name (one component).
    pub name: std::ffi::OsString,
    /// Its kind, not following symlinks.
    pub kind: Kind,
    /// `st_mode` permission bits.
    pub mode: u32,
    /// Hard link count.
    pub nlink: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Lists a directory through `dir` (an open directory descriptor), sorted by name, with each
/// entry stat'ed relative to it without following symlinks.
pub fn read_entries(dir: &std::os::fd::OwnedFd) -> io::Result<Vec<Entry>> {
    use nix::fcntl::{AtFlags, OFlag};
    use std::os::unix::ffi::OsStrExt;
    // Dir takes ownership, so read through a duplicate opened on ".".
    let dup = nix::fcntl::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let mut d = nix::dir::Dir::from_fd(dup)?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e?;
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = std::ffi::OsStr::from_bytes(name).to_os_string();
        let st = nix::sys::stat::fstatat(dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
        out.push(Entry {
            name,
            kind: Kind::of(st.st_mode),
            mode: st.st_mode & 0o7777,
            nlink: st.st_nlink,
            size: u64::try_from(st.st_size).unwrap_or(0),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_job_made_tree_is_removed_without_following_links_out_of_it() {
        let base = std::env::temp_dir().join(format!(
            "bulwark-rmtree-{}-{}",
            std::process::id(),
            random_hex(4)
        ));
        let outside = base.join("outside");
        let tree = base.join("tree");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("keep"), "host file").unwrap();
        fs::create_dir_all(tree.join("a/b/empty")).unwrap();
        fs::create_dir_all(tree.join("locked/inner")).unwrap();
        fs::write(tree.join("a/b/file"), "x").unwrap();
        fs::write(tree.join("locked/inner/file"), "y").unwrap();
        symlink(&outside, tree.join("a/link-out")).unwrap();
        fs::set_permissions(tree.join("locked/inner"), fs::Permissions::from_mode(0o000)).unwrap();
        fs::set_permissions(tree.join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert_eq!(
            fs::read_to_string(outside.join("keep")).unwrap(),
            "host file"
        );
        // An empty directory, and a path that is already gone.
        fs::create_dir(&tree).unwrap();
        remove_tree(&tree).unwrap();
        remove_tree(&tree).unwrap();
        fs::remove_dir_all(&base).unwrap();
    }
}
