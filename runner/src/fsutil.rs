//! Small filesystem helpers shared by the runner: atomic writes and removing trees a job made.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to `path` under a temporary name in the same directory, fsyncs it, renames it
/// over `path` and fsyncs the directory (the rename itself is durable only then): readers see
/// the old file or the whole new one, also after a crash, and once this returns the new one
/// survives a power loss. For what must (signed provenance, keys, the tool store's records).
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

/// Creates a new file beside `path` under a name no one can predict or have made already
/// (`.<tag>-<random>`, created with `O_EXCL`, which also refuses a symlink there), to be
/// renamed over `path` once written. The name does not repeat `path`'s, so any name that fits
/// the filesystem's limit has a temporary name that does too. A fixed or guessable temporary name in a directory a
/// job's outputs land in would let an output named like it be truncated, replaced or renamed
/// over another file.
pub fn create_beside(path: &Path, tag: &str) -> io::Result<(std::path::PathBuf, File)> {
    create_beside_mode(path, tag, 0o666)
}

/// [`create_beside`], the file created with `mode` (less the umask) from its first moment: a
/// private key's temporary file is never readable by anyone else, not even for a moment.
pub fn create_beside_mode(
    path: &Path,
    tag: &str,
    mode: u32,
) -> io::Result<(std::path::PathBuf, File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut last = None;
    for _ in 0..16 {
        let tmp = dir.join(format!(".{tag}-{}", random_hex(8)));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temporary name")))
}

/// [`write_atomic`], the file given exactly `mode` (whatever the umask) through its descriptor
/// before it is renamed into place: nothing changes the mode by path afterwards, where a
/// swapped-in symlink would take the change elsewhere.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_renamed_mode(path, bytes, true, Some(mode))
}

/// Writes `bytes` to `path` only if nothing is there yet, and only whole: written and fsynced
/// under a temporary name created with `mode`, then hard-linked to `path` (which fails if
/// `path` exists, symlink included, and never replaces it) and the temporary name removed.
/// Returns `false` when `path` already existed (nothing was written). A crash leaves either
/// no file at `path` or the whole one, never a half-written file under the final name; two
/// writers at once leave exactly one of their files. An error after the file was linked
/// (its directory could not be synced) leaves the whole file there, its name perhaps not
/// durable: the caller is told, as its record is not known to survive a power loss.
pub fn write_new_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<bool> {
    let (tmp, mut f) = create_beside_mode(path, "bulwark-new", mode)?;
    let result = (|| {
        f.write_all(bytes)?;
        f.sync_all()?;
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    })();
    let _ = fs::remove_file(&tmp);
    if let Ok(true) = result {
        // The name is durable only once its directory is: a caller told it was written
        // relies on that (a lease record, a key), so a failed sync is its error.
        sync_parent(path)?;
    }
    result
}

fn write_renamed(path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    write_renamed_mode(path, bytes, sync, None)
}

fn write_renamed_mode(path: &Path, bytes: &[u8], sync: bool, mode: Option<u32>) -> io::Result<()> {
    let (tmp, mut f) = create_beside(path, "bulwark-tmp")?;
    let result = (|| {
        if let Some(mode) = mode {
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        }
        f.write_all(bytes)?;
        if sync {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    if sync {
        sync_parent(path)?;
    }
    Ok(())
}

/// Fsyncs the directory holding `path`: what makes a rename, a new name or a removal in it
/// durable.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Makes `path` (and its missing parents) a directory only its owner can enter (0700), also
/// when it existed with another mode; refuses a path that is not a directory (a symlink
/// included). For what holds the runner's secrets or job specs (its identity, the daemon's
/// jobs).
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    if !fs::symlink_metadata(path)?.is_dir() {
        return Err(io::Error::other("not a directory"));
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
}

/// Takes an exclusive `flock` on `file`, waiting for another holder no later than `deadline`:
/// `Ok(None)` when it still holds it then (the file is dropped). Polled, since `flock` has
/// no timeout of its own; an interrupted attempt is retried.
pub fn lock_until(
    file: File,
    deadline: std::time::Instant,
) -> Result<Option<nix::fcntl::Flock<File>>, nix::errno::Errno> {
    use nix::errno::Errno;
    use nix::fcntl::{Flock, FlockArg};
    let mut file = file;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(Some(lock)),
            Err((back, Errno::EWOULDBLOCK | Errno::EINTR)) => file = back,
            Err((_, errno)) => return Err(errno),
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        std::thread::sleep(left.min(std::time::Duration::from_millis(20)));
    }
}

/// Removes a directory tree that a job wrote, without following symlinks (see
/// `remove_tree_walk`), first making any directory the job left unreadable or unwritable
/// accessible again. A job controls the shape of the tree: one deeper than this walk goes is
/// handed to `rm -rf --one-file-system`, which walks any depth with `openat`.
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

/// The walk works on directory descriptors only (`openat(O_NOFOLLOW)`, `fstatat` without
/// following, `unlinkat`, `fchmod`): a process of the job still running (it should not be,
/// but removal also runs after a runner error) that swaps a directory for a symlink to
/// `/etc` between two steps makes a call fail, never reach through the link.
fn remove_tree_walk(path: &Path, depth: usize) -> io::Result<()> {
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
    empty_dir(
        open_for_emptying(nix::fcntl::AT_FDCWD, path.as_os_str())?,
        depth,
    )?;
    fs::remove_dir(path)
}

/// Opens the directory `name` (relative to `dir`) to be emptied. A directory its owner took
/// every permission from (`chmod 0 a`, which a job can do to its own workspace) cannot be
/// opened for reading by anyone but root: it is opened as a path only (`O_PATH`, which needs
/// no permission on it), given back its owner's permissions through that exact descriptor
/// (`/proc/self/fd/N`: the inode opened, never what a name leads to later), and opened for
/// reading through it. As the runner's own user (rootless) this is how its files come back;
/// as root, reading needs no permission anyway.
fn open_for_emptying(
    dir: impl std::os::fd::AsFd,
    name: &std::ffi::OsStr,
) -> io::Result<std::os::fd::OwnedFd> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::{fstat, Mode};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::PermissionsExt;
    match openat(&dir, name, DIR_FLAGS, Mode::empty()) {
        Err(nix::errno::Errno::EACCES) => {}
        opened => return opened.map_err(io::Error::from),
    }
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let path = openat(&dir, name, flags, Mode::empty()).map_err(io::Error::from)?;
    let st = fstat(&path).map_err(io::Error::from)?;
    fs::set_permissions(
        format!("/proc/self/fd/{}", path.as_raw_fd()),
        fs::Permissions::from_mode((st.st_mode & 0o7777) | 0o700),
    )?;
    openat(&path, ".", DIR_FLAGS, Mode::empty()).map_err(io::Error::from)
}

/// A directory opened to be walked or locked: read-only, never through a symlink at its last
/// component, close-on-exec.
pub fn open_dir(path: &Path) -> io::Result<std::os::fd::OwnedFd> {
    nix::fcntl::open(path, DIR_FLAGS, nix::sys::stat::Mode::empty()).map_err(io::Error::from)
}

const DIR_FLAGS: nix::fcntl::OFlag = nix::fcntl::OFlag::O_RDONLY
    .union(nix::fcntl::OFlag::O_DIRECTORY)
    .union(nix::fcntl::OFlag::O_NOFOLLOW)
    .union(nix::fcntl::OFlag::O_CLOEXEC);

/// Removes everything in `dir`, first making it searchable and writable by its owner again.
fn empty_dir(dir: std::os::fd::OwnedFd, depth: usize) -> io::Result<()> {
    use nix::fcntl::AtFlags;
    use nix::sys::stat::{fchmod, fstat, fstatat, Mode, SFlag};
    use nix::unistd::{unlinkat, UnlinkatFlags};
    use std::os::unix::ffi::OsStrExt;
    if depth > MAX_WALK_DEPTH {
        return Err(io::Error::other("tree too deep"));
    }
    let st = fstat(&dir).map_err(io::Error::from)?;
    if st.st_mode & 0o700 != 0o700 {
        let _ = fchmod(
            &dir,
            Mode::from_bits_truncate((st.st_mode & 0o7777) | 0o700),
        );
    }
    let mut names = Vec::new();
    let mut listing = nix::dir::Dir::from_fd(nix::unistd::dup(&dir).map_err(io::Error::from)?)
        .map_err(io::Error::from)?;
    for entry in listing.iter() {
        let entry = entry.map_err(io::Error::from)?;
        let name = std::ffi::OsStr::from_bytes(entry.file_name().to_bytes()).to_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    drop(listing);
    for name in names {
        let name = name.as_os_str();
        let st = match fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(nix::errno::Errno::ENOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
            empty_dir(open_for_emptying(&dir, name)?, depth + 1)?;
            unlinkat(&dir, name, UnlinkatFlags::RemoveDir).map_err(io::Error::from)?;
        } else {
            unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir).map_err(io::Error::from)?;
        }
    }
    Ok(())
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

/// Opens `path` for reading without waiting (`O_NONBLOCK`: a fifo would wait for a writer
/// that may never come), and only if it is a regular file, as examined through the
/// descriptor, so that what is examined is what is read; `no_follow`: not through a symlink.
pub fn open_regular(path: &Path, no_follow: bool) -> io::Result<File> {
    let mut flags = nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC;
    if no_follow {
        flags |= nix::libc::O_NOFOLLOW;
    }
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| {
            if no_follow && e.raw_os_error() == Some(nix::libc::ELOOP) {
                io::Error::other("not a regular file (a symlink, not followed)")
            } else {
                e
            }
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        use std::os::unix::fs::MetadataExt;
        return Err(io::Error::other(format!(
            "not a regular file (a {})",
            Kind::of(meta.mode()).name()
        )));
    }
    // For a regular file O_NONBLOCK changes nothing; cleared all the same.
    nix::fcntl::fcntl(
        std::os::fd::AsFd::as_fd(&file),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )?;
    Ok(file)
}

/// The whole of `path`, a regular file ([`open_regular`], symlinks followed) of at most
/// `max_bytes`. For the small files an operator names on a command line (a public key, a
/// policy): read with `read_to_string`, `/dev/zero` fills memory, a large file is read whole
/// for nothing, and a fifo without a writer waits for ever.
pub fn read_regular_capped(path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    open_regular(path, false)?
        .take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        let limit = match max_bytes {
            n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
            n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
            n => format!("{n} bytes"),
        };
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("larger than {limit}"),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn a_tree_deeper_than_the_walk_is_removed_by_the_fallback() {
        let base = crate::tools::testutil::TempDir::named("bulwark-rmdeep");
        let mut p = base.to_path_buf();
        for _ in 0..MAX_WALK_DEPTH + 20 {
            p.push("d");
        }
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("f"), "x").unwrap();
        remove_tree(&base).unwrap();
        assert!(!base.exists());
    }

    #[test]
    fn a_job_made_tree_is_removed_without_following_links_out_of_it() {
        let base = crate::tools::testutil::TempDir::named("bulwark-rmtree");
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
