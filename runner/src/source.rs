//! Copying a local source directory into the job's workspace.
//!
//! The source is untrusted content (a pull request's tree), and the runner reads it with its
//! own privileges, so the copy never follows a symlink and never opens anything but regular
//! files and directories: symlinks are recreated as symlinks (their targets are never read;
//! inside the sandbox they resolve in the job's own view), fifos, sockets and devices are
//! skipped without being opened, and every directory is walked through descriptors
//! (`openat` with `O_NOFOLLOW`), so swapping a directory for a symlink mid-copy gains nothing.
//! A top-level `bulwark-out/` (the default output location) is skipped. setuid and setgid bits
//! are dropped.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::fcntl::{openat, readlinkat, OFlag};
use nix::sys::stat::{fstat, mkdirat, Mode};
use nix::unistd::symlinkat;

use std::os::unix::ffi::OsStrExt;

use crate::disk_reserve::Room;
use crate::fsutil::{read_entries, Kind};

/// One entry of the copied tree, for the tree digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// Relative path, as the bytes of its names (which need not be UTF-8).
    pub path: Vec<u8>,
    /// `d` directory, `f` file, `x` executable file, `l` symlink.
    pub kind: char,
    /// File: sha256 hex of the contents; symlink: the target's bytes; directory: empty.
    pub content: Vec<u8>,
}

/// The name of the tree digest algorithm [`tree_digest`] computes, as recorded in provenance
/// and in the tool store's records.
pub const TREE_ALGORITHM: &str = "bulwark-tree-v2";

/// The `bulwark-tree-v2` digest of a copied tree (documented in docs/build-type.md): sha256
/// over the entries sorted by path bytes, each `<kind> <path>\0<content>\n`, where a
/// backslash or newline in the path or content is written as `\\` or `\n`, and each byte that
/// is not part of valid UTF-8 as `\xNN` (two lowercase hex digits).
///
/// v1 wrote path and content as they are, so a newline in a file name or link target could
/// make two different trees encode to the same bytes; escaping makes the encoding injective.
/// A name is bytes, not text: taken as text (lossily, every invalid byte becoming U+FFFD),
/// `run\xff.sh` and `run\xfe.sh` would be one name. For a tree whose names and link targets
/// are UTF-8 with no backslash or newline, v2 equals v1.
pub fn tree_digest(entries: &[TreeEntry]) -> String {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<&TreeEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut h = Sha256::new();
    for e in sorted {
        h.update(format!("{} {}", e.kind, escaped(&e.path)).as_bytes());
        h.update([0u8]);
        h.update(escaped(&e.content).as_bytes());
        h.update(b"\n");
    }
    crate::outputs::hex(&h.finalize())
}

/// `bytes` as text: `\` written as `\\`, a newline as `\n`, and every byte that is not part of
/// valid UTF-8 as `\xNN`; anything else as it is.
fn escaped(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        if !text.contains(['\\', '\n']) {
            return std::borrow::Cow::Borrowed(text);
        }
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    std::borrow::Cow::Owned(out)
}

/// What a copy did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CopyStats {
    /// Every directory, file and symlink copied.
    pub entries: Vec<TreeEntry>,
    /// Regular files copied.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Symlinks recreated (never followed).
    pub symlinks: u64,
    /// The first [`MAX_SKIPPED_NAMED`] entries skipped (fifos, sockets, devices: never
    /// opened), each name cut to 200 characters.
    pub skipped: Vec<String>,
    /// How many entries were skipped in all; each counts against the copy's entry bound.
    pub skipped_count: u64,
    /// Bytes of the relative paths and link targets walked (those held in `entries`, and the
    /// paths of skipped entries, charged alike): bounded by [`MAX_LISTING_BYTES`].
    pub listing_bytes: u64,
    /// Bytes copied.
    pub bytes: u64,
}

/// What each entry is charged against a copy's byte bound besides its contents: the block it
/// takes on disk whatever its size (`bulwark_protocol::CACHE_ENTRY_CHARGE`, as the cache store
/// weighs a cache).
pub const ENTRY_CHARGE: u64 = bulwark_protocol::CACHE_ENTRY_CHARGE;

impl CopyStats {
    /// What the copy has taken against its byte bound so far: the bytes copied and
    /// [`ENTRY_CHARGE`] for each entry made or skipped.
    pub fn charged(&self) -> u64 {
        let entries = (self.entries.len() as u64).saturating_add(self.skipped_count);
        self.bytes
            .saturating_add(entries.saturating_mul(ENTRY_CHARGE))
    }
}

/// A copy failed at `path`.
#[derive(Debug, thiserror::Error)]
#[error("source {path}: {source}")]
pub struct CopyError {
    /// Relative path inside the source.
    pub path: String,
    /// Cause.
    #[source]
    pub source: io::Error,
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// What a copy is of; the rules are the same but for what this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tree {
    /// A job's source: a top-level `bulwark-out/` (the default output directory of a local
    /// run) is left out.
    Source,
    /// A whole tree (a cache): nothing is left out by name.
    Whole,
}

/// Copies `src` into the existing empty directory `dst`, refused (with what was copied left
/// for the caller to remove) as soon as it would take more than `room`: checked before each
/// entry, against the file's size before it is copied and the bytes actually copied after.
/// With `owner`, every entry made is given to that uid and gid as it is made, through its own
/// descriptor (no walk by path afterwards, which a deep tree would take past `PATH_MAX`).
pub fn copy_tree(
    src: &Path,
    dst: &Path,
    tree: Tree,
    room: Room,
    owner: Option<(u32, u32)>,
) -> Result<CopyStats, CopyError> {
    let src = crate::fsutil::open_dir(src).map_err(|source| CopyError {
        path: ".".into(),
        source,
    })?;
    copy_tree_from(&src, dst, tree, room, owner)
}

/// [`copy_tree`] from a directory already open as `src`: the directory that was checked is the
/// one copied, whatever its path leads to by now.
pub fn copy_tree_from(
    src: &OwnedFd,
    dst: &Path,
    tree: Tree,
    room: Room,
    owner: Option<(u32, u32)>,
) -> Result<CopyStats, CopyError> {
    let walk = Walk {
        room,
        skip_top: (tree == Tree::Source).then_some("bulwark-out"),
        owner,
        listing_max: MAX_LISTING_BYTES,
        refuse: None,
    };
    copy_from(src, dst, &walk)
}

/// [`copy_tree`] (of the runner's own files: no owner) that refuses, as soon as it meets one,
/// any file, link target or path holding a value `refuse` finds (a credential the job was
/// given, in any form the log would mask): the error's cause is [`HoldsCredential`], and the
/// file that held it is left empty (the caller removes the rest). The copy reads every byte
/// anyway; each chunk is searched as it is read, before it is written, and an occurrence split
/// across chunks is found too.
pub fn copy_tree_refusing(
    src: &Path,
    dst: &Path,
    tree: Tree,
    room: Room,
    refuse: &crate::creds::mask::Finder,
) -> Result<CopyStats, CopyError> {
    let src = crate::fsutil::open_dir(src).map_err(|source| CopyError {
        path: ".".into(),
        source,
    })?;
    let walk = Walk {
        room,
        skip_top: (tree == Tree::Source).then_some("bulwark-out"),
        owner: None,
        listing_max: MAX_LISTING_BYTES,
        refuse: (!refuse.is_empty()).then_some(refuse),
    };
    copy_from(&src, dst, &walk)
}

fn copy_from(src: &OwnedFd, dst: &Path, walk: &Walk<'_>) -> Result<CopyStats, CopyError> {
    let d = nix::fcntl::open(dst, DIR_FLAGS, Mode::empty()).map_err(|e| CopyError {
        path: ".".into(),
        source: e.into(),
    })?;
    let mut stats = CopyStats::default();
    copy_dir(src, &d, "", b"", 0, &mut stats, walk)?;
    Ok(stats)
}

/// What holds for a whole copy: its room, the top-level name it skips, if any, and whom
/// what it makes belongs to, if not the runner.
struct Walk<'a> {
    room: Room,
    skip_top: Option<&'a str>,
    owner: Option<(u32, u32)>,
    /// [`MAX_LISTING_BYTES`], smaller in tests.
    listing_max: u64,
    /// Values no copied path, link target or file may hold ([`copy_tree_refusing`]).
    refuse: Option<&'a crate::creds::mask::Finder>,
}

/// How many skipped entries a copy names (in [`CopyStats::skipped`] and the log); the rest are
/// only counted.
pub const MAX_SKIPPED_NAMED: usize = 20;

/// Most bytes of paths and link targets a copy keeps for its tree digest: each entry's whole
/// relative path is held until the digest is computed, and a job can make paths up to 64 KiB
/// long (256 levels of 255-byte names), so without this bound half a million such entries (a
/// cache's default entry bound) would take 32 GB of the runner's memory. 256 MiB is two
/// orders of magnitude above the largest real source trees' listings.
pub const MAX_LISTING_BYTES: u64 = 256 << 20;

/// Most levels of directories a copy makes below its destination (as many as
/// `fsutil::remove_tree` walks below what it removes): each level holds two descriptors and a
/// stack frame, and a tree a job made may be as deep as it likes.
pub const MAX_COPY_DEPTH: usize = 256;

/// The refusal when a copy would take more than its room.
fn no_room(path: &str) -> CopyError {
    CopyError {
        path: path.to_string(),
        source: io::Error::other(NoRoom),
    }
}

/// The cause of a [`CopyError`] for a copy that would have taken more than its room.
#[derive(Debug, thiserror::Error)]
#[error(
    "copying it would take the workspace's filesystem below limits.min_free_disk; free space there"
)]
pub struct NoRoom;

/// The cause of a [`CopyError`] for a tree whose paths and link targets take more than
/// [`MAX_LISTING_BYTES`].
#[derive(Debug, thiserror::Error)]
#[error("the tree's paths and link targets take more than {} MiB; not copied: remove generated or deeply nested trees from it", MAX_LISTING_BYTES >> 20)]
pub struct ListingTooLarge;

/// The cause of a [`CopyError`] for an entry holding a credential's value
/// ([`copy_tree_refusing`]): names the credential, never the value. The error's path is the
/// file or link that holds it, or, when its name does, the directory it is in.
#[derive(Debug, thiserror::Error)]
#[error("{what} a value of the job's credential {credential:?} (as issued, or percent-, JSON- or base64-encoded)")]
pub struct HoldsCredential {
    /// The credential's name.
    pub credential: String,
    /// What holds it: `holds` (contents or link target), or `has an entry whose path holds`.
    pub what: &'static str,
}

/// The cause of a [`CopyError`] for a tree deeper than [`MAX_COPY_DEPTH`].
#[derive(Debug, thiserror::Error)]
#[error("more than {MAX_COPY_DEPTH} directories deep; not copied")]
pub struct TooDeep;

impl CopyError {
    /// Whether the copy stopped because it would have taken more than its room.
    pub fn is_no_room(&self) -> bool {
        self.source
            .get_ref()
            .is_some_and(|inner| inner.is::<NoRoom>())
    }

    /// The credential whose value the copy met ([`copy_tree_refusing`]), if that stopped it.
    pub fn credential(&self) -> Option<&str> {
        self.source
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<HoldsCredential>())
            .map(|h| h.credential.as_str())
    }

    /// Whether the copy stopped at [`MAX_COPY_DEPTH`].
    pub fn is_too_deep(&self) -> bool {
        self.source
            .get_ref()
            .is_some_and(|inner| inner.is::<TooDeep>())
    }
}

fn copy_dir(
    src: &OwnedFd,
    dst: &OwnedFd,
    rel: &str,
    rel_bytes: &[u8],
    depth: usize,
    stats: &mut CopyStats,
    walk: &Walk<'_>,
) -> Result<(), CopyError> {
    let room = walk.room;
    let give = |fd: &OwnedFd| match walk.owner {
        Some((uid, gid)) => nix::unistd::fchown(
            fd,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        ),
        None => Ok(()),
    };
    let entries = read_entries(src).map_err(|e| CopyError {
        path: display(rel),
        source: e,
    })?;
    for e in entries {
        let name = e.name.as_os_str();
        let child = join(rel, name);
        let child_bytes = join_bytes(rel_bytes, name);
        let at = |err: nix::Error| CopyError {
            path: child.clone(),
            source: err.into(),
        };
        if rel.is_empty() && walk.skip_top.is_some_and(|skip| name == skip) {
            continue;
        }
        // First, before any error could name this path: the whole path, so that a value split
        // across names is found too. The error names the path only up to the directory above
        // where the value starts, so no part of it is shown.
        if let Some((at, credential)) = walk.refuse.and_then(|f| f.find_at(&child_bytes)) {
            let above = child_bytes[..at]
                .iter()
                .rposition(|&b| b == b'/')
                .map_or(String::new(), |i| {
                    String::from_utf8_lossy(&child_bytes[..i]).into_owned()
                });
            return Err(holds(
                &display(&above),
                credential,
                "has an entry whose path holds",
            ));
        }
        if room
            .entries
            .is_some_and(|max| stats.entries.len() as u64 + stats.skipped_count >= max)
        {
            return Err(no_room(&child));
        }
        // Every entry takes a block on disk whatever its size (a directory, a link, a file of
        // one byte): charged against the byte bound as the cache store weighs it.
        if room
            .bytes
            .is_some_and(|max| stats.charged().saturating_add(ENTRY_CHARGE) > max)
        {
            return Err(no_room(&child));
        }
        // Charged before anything is made for it: the path is kept for the digest (a skipped
        // entry's only while it is among the first named, but it is charged all the same).
        stats.listing_bytes += child_bytes.len() as u64;
        if stats.listing_bytes > walk.listing_max {
            return Err(CopyError {
                path: shortened(&child),
                source: io::Error::other(ListingTooLarge),
            });
        }
        match e.kind {
            Kind::Dir => {
                // Refused before the directory is made: nothing deeper than the bound is left
                // behind for a removal to meet.
                if depth + 1 > MAX_COPY_DEPTH {
                    return Err(CopyError {
                        path: shortened(&child),
                        source: io::Error::other(TooDeep),
                    });
                }
                mkdirat(dst, name, Mode::from_bits_truncate(0o755)).map_err(at)?;
                let s = openat(src, name, DIR_FLAGS, Mode::empty()).map_err(at)?;
                let d = openat(dst, name, DIR_FLAGS, Mode::empty()).map_err(at)?;
                give(&d).map_err(at)?;
                stats.dirs += 1;
                stats.entries.push(TreeEntry {
                    path: child_bytes.clone(),
                    kind: 'd',
                    content: Vec::new(),
                });
                copy_dir(&s, &d, &child, &child_bytes, depth + 1, stats, walk)?;
                let _ =
                    nix::sys::stat::fchmod(&d, Mode::from_bits_truncate(e.mode & 0o777 | 0o700));
            }
            Kind::File => {
                // O_NONBLOCK: if the entry was swapped for a fifo after we listed it, the
                // open does not hang; fstat below then refuses it.
                let s = openat(
                    src,
                    name,
                    OFlag::O_RDONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_NONBLOCK
                        | OFlag::O_CLOEXEC
                        | OFlag::O_NOCTTY,
                    Mode::empty(),
                )
                .map_err(at)?;
                let st = fstat(&s).map_err(at)?;
                if Kind::of(st.st_mode) != Kind::File {
                    stats.skip(&child, Kind::of(st.st_mode));
                    continue;
                }
                let size = u64::try_from(st.st_size).unwrap_or(u64::MAX);
                if room.bytes.is_some_and(|max| {
                    stats
                        .charged()
                        .saturating_add(ENTRY_CHARGE)
                        .saturating_add(size)
                        > max
                }) {
                    return Err(no_room(&child));
                }
                let mode = Mode::from_bits_truncate(st.st_mode & 0o777);
                let d = openat(
                    dst,
                    name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    mode,
                )
                .map_err(at)?;
                give(&d).map_err(at)?;
                let (sf, df) = (File::from(s), File::from(d));
                let mut scan = walk.refuse.map(|f| f.scan());
                let (n, sha) = copy_hashing(sf, df, scan.as_mut()).map_err(|err| CopyError {
                    path: child.clone(),
                    source: err,
                })?;
                stats.files += 1;
                stats.bytes += n;
                // The file may have grown while it was copied.
                if room
                    .bytes
                    .is_some_and(|max| stats.charged().saturating_add(ENTRY_CHARGE) > max)
                {
                    return Err(no_room(&child));
                }
                let kind = if st.st_mode & 0o111 != 0 { 'x' } else { 'f' };
                stats.entries.push(TreeEntry {
                    path: child_bytes,
                    kind,
                    content: sha.into_bytes(),
                });
            }
            Kind::Symlink => {
                let target = readlinkat(src, name).map_err(at)?;
                if let Some(credential) = walk
                    .refuse
                    .and_then(|f| f.find_in(target.as_os_str().as_bytes()))
                {
                    return Err(holds(&child, credential, "holds"));
                }
                stats.listing_bytes += target.len() as u64;
                if stats.listing_bytes > walk.listing_max {
                    return Err(CopyError {
                        path: shortened(&child),
                        source: io::Error::other(ListingTooLarge),
                    });
                }
                symlinkat(target.as_os_str(), dst, name).map_err(at)?;
                if let Some((uid, gid)) = walk.owner {
                    nix::unistd::fchownat(
                        dst,
                        name,
                        Some(nix::unistd::Uid::from_raw(uid)),
                        Some(nix::unistd::Gid::from_raw(gid)),
                        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(at)?;
                }
                stats.symlinks += 1;
                stats.entries.push(TreeEntry {
                    path: child_bytes,
                    kind: 'l',
                    content: target.as_os_str().as_bytes().to_vec(),
                });
            }
            Kind::Fifo | Kind::Socket | Kind::Device => stats.skip(&child, e.kind),
        }
    }
    Ok(())
}

impl CopyStats {
    /// Counts a skipped entry; names the first [`MAX_SKIPPED_NAMED`], in `skipped` and the log.
    fn skip(&mut self, path: &str, kind: Kind) {
        self.skipped_count += 1;
        if self.skipped.len() < MAX_SKIPPED_NAMED {
            let path = shortened(path);
            tracing::info!(
                path = %bulwark_protocol::terminal::escape(&path),
                kind = kind.name(),
                "source entry skipped"
            );
            self.skipped.push(path);
        }
    }
}

/// The refusal of an entry that holds a credential's value: `path` names what holds it.
fn holds(path: &str, credential: &str, what: &'static str) -> CopyError {
    CopyError {
        path: path.to_string(),
        source: io::Error::other(HoldsCredential {
            credential: credential.to_string(),
            what,
        }),
    }
}

/// Copies `src` into `dst`, returning the bytes copied and their sha256; with `scan`, each
/// chunk is searched before it is written, and a credential found stops the copy with
/// [`HoldsCredential`] and empties `dst` (what it held of the file before is gone too).
fn copy_hashing(
    mut src: File,
    mut dst: File,
    mut scan: Option<&mut crate::creds::mask::Scan<'_>>,
) -> io::Result<(u64, String)> {
    use io::{Read, Write};
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let k = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Some(credential) = scan.as_mut().and_then(|s| s.feed(&buf[..k])) {
            let credential = credential.to_string();
            zeroize::Zeroize::zeroize(&mut buf);
            // Not even the part of the value before this chunk stays in the copy.
            dst.set_len(0)?;
            return Err(io::Error::other(HoldsCredential {
                credential,
                what: "holds",
            }));
        }
        h.update(&buf[..k]);
        dst.write_all(&buf[..k])?;
        n += k as u64;
    }
    Ok((n, crate::outputs::hex(&h.finalize())))
}

fn join(rel: &str, name: &OsStr) -> String {
    let n = name.to_string_lossy();
    if rel.is_empty() {
        n.into_owned()
    } else {
        format!("{rel}/{n}")
    }
}

/// `rel_bytes/name` as bytes: the path the tree digest is over.
fn join_bytes(rel_bytes: &[u8], name: &OsStr) -> Vec<u8> {
    let mut out = Vec::with_capacity(rel_bytes.len() + 1 + name.len());
    if !rel_bytes.is_empty() {
        out.extend_from_slice(rel_bytes);
        out.push(b'/');
    }
    out.extend_from_slice(name.as_bytes());
    out
}

/// A long relative path (a deep tree's) cut to its first 200 characters.
fn shortened(rel: &str) -> String {
    match rel.char_indices().nth(200) {
        None => rel.to_string(),
        Some((cut, _)) => format!("{}… ({} bytes)", &rel[..cut], rel.len()),
    }
}

fn display(rel: &str) -> String {
    if rel.is_empty() {
        ".".into()
    } else {
        rel.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A source copy with no bound and no owner.
    fn copy(src: &Path, dst: &Path) -> Result<CopyStats, CopyError> {
        copy_tree(src, dst, Tree::Source, Room::default(), None)
    }

    fn tempdir(tag: &str) -> crate::tools::testutil::TempDir {
        crate::tools::testutil::TempDir::named(&format!("bulwark-src-{tag}"))
    }

    #[test]
    fn symlinks_are_recreated_and_fifos_skipped_without_reading() {
        let src = tempdir("s");
        let dst = tempdir("d");
        std::fs::write(src.join("a.txt"), "hello").unwrap();
        std::fs::create_dir(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/b"), "b").unwrap();
        symlink("/etc/shadow", src.join("evil")).unwrap();
        nix::unistd::mkfifo(&src.join("pipe"), Mode::from_bits_truncate(0o644)).unwrap();
        std::fs::create_dir(src.join("bulwark-out")).unwrap();
        // Opening the fifo for reading would block forever: the test would hang, not fail.
        let stats = copy(&src, &dst).unwrap();
        assert_eq!(std::fs::read_to_string(dst.join("a.txt")).unwrap(), "hello");
        assert_eq!(std::fs::read_to_string(dst.join("sub/b")).unwrap(), "b");
        assert_eq!(
            std::fs::read_link(dst.join("evil")).unwrap(),
            Path::new("/etc/shadow")
        );
        assert!(std::fs::symlink_metadata(dst.join("evil"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(!dst.join("pipe").exists());
        assert!(!dst.join("bulwark-out").exists());
        assert_eq!(stats.skipped, vec!["pipe".to_string()]);
        assert_eq!(stats.files, 2);
        // The tree digest covers content and links, not the skipped fifo, and is stable.
        let d1 = tree_digest(&stats.entries);
        assert_eq!(d1.len(), 64);
        let dst2 = tempdir("d2");
        nix::unistd::mkfifo(&src.join("pipe2"), Mode::from_bits_truncate(0o644)).unwrap();
        assert_eq!(tree_digest(&copy(&src, &dst2).unwrap().entries), d1);
        std::fs::write(src.join("sub/b"), "B").unwrap();
        let dst3 = tempdir("d3");
        assert_ne!(tree_digest(&copy(&src, &dst3).unwrap().entries), d1);
    }

    #[test]
    fn skipped_entries_are_counted_against_the_entry_bound_and_named_only_twenty_times() {
        let src = tempdir("skip-s");
        for i in 0..25 {
            nix::unistd::mkfifo(
                &src.join(format!("p{i:02}")),
                Mode::from_bits_truncate(0o644),
            )
            .unwrap();
        }
        let dst = tempdir("skip-d");
        let stats = copy(&src, &dst).unwrap();
        assert_eq!(stats.skipped_count, 25);
        assert_eq!(stats.skipped.len(), MAX_SKIPPED_NAMED);
        assert!(stats.entries.is_empty());
        // Fifos cost no bytes, but each is an entry the runner walked and counted.
        let dst = tempdir("skip-d2");
        let room = Room {
            entries: Some(10),
            ..Room::default()
        };
        let err = copy_tree(&src, &dst, Tree::Source, room, None).unwrap_err();
        assert!(err.is_no_room(), "{err}");
    }

    #[test]
    fn a_tree_whose_paths_and_link_targets_exceed_the_listing_bound_is_refused() {
        let src = tempdir("listing-s");
        let long = "a".repeat(200);
        std::fs::create_dir(src.join(&long)).unwrap();
        std::fs::write(src.join(&long).join("f"), "x").unwrap();
        let walk = |listing_max| Walk {
            room: Room::default(),
            skip_top: None,
            owner: None,
            listing_max,
            refuse: None,
        };
        let open = || crate::fsutil::open_dir(&src).unwrap();
        // 200 + 202 bytes of paths: within 402, not within 401.
        let dst = tempdir("listing-d1");
        copy_from(&open(), &dst, &walk(402)).unwrap();
        let dst = tempdir("listing-d2");
        let err = copy_from(&open(), &dst, &walk(401)).unwrap_err();
        assert!(
            err.to_string()
                .contains("paths and link targets take more than"),
            "{err}"
        );
        // A link target counts as well: 1 byte of name and 500 of target.
        let src2 = tempdir("listing-s2");
        symlink("t".repeat(500), src2.join("l")).unwrap();
        let dst = tempdir("listing-d3");
        let fd = crate::fsutil::open_dir(&src2).unwrap();
        assert!(copy_from(&fd, &dst, &walk(500)).is_err());
        let dst = tempdir("listing-d4");
        copy_from(&fd, &dst, &walk(501)).unwrap();
    }

    #[test]
    fn a_copy_larger_than_its_room_is_refused_naming_the_reserve() {
        let src = tempdir("room-s");
        std::fs::create_dir(src.join("d")).unwrap();
        std::fs::write(src.join("d/a"), vec![0u8; 3000]).unwrap();
        std::fs::write(src.join("d/b"), vec![0u8; 3000]).unwrap();
        let within = |bytes, entries| {
            let dst = tempdir("room-d");
            copy_tree(&src, &dst, Tree::Source, Room { bytes, entries }, None)
                .map(|s| s.bytes)
                .map_err(|e| e.to_string())
        };
        // Each of the three entries takes a block besides its contents.
        let charged = 6000 + 3 * ENTRY_CHARGE;
        assert_eq!(within(Some(charged), Some(3)), Ok(6000));
        let err = within(Some(charged - 1), None).unwrap_err();
        assert!(
            err.starts_with("source d/")
                && err.ends_with("below limits.min_free_disk; free space there"),
            "{err}"
        );
        assert!(within(None, Some(2)).is_err());
    }

    #[test]
    fn names_that_are_not_utf8_cannot_make_two_trees_share_a_digest() {
        use std::os::unix::ffi::OsStrExt;
        // The same file under two names that differ in one byte that is not UTF-8, and under
        // the name the lossy conversion of either would give (U+FFFD).
        let digest_of = |name: &[u8], tag: &str| {
            let src = std::env::temp_dir().join(format!(
                "bulwark-src-utf8-{tag}-{}-{}",
                std::process::id(),
                crate::fsutil::random_hex(4)
            ));
            let dst = src.with_extension("copy");
            std::fs::create_dir_all(&src).unwrap();
            std::fs::create_dir_all(&dst).unwrap();
            std::fs::write(src.join(std::ffi::OsStr::from_bytes(name)), "same\n").unwrap();
            let digest = tree_digest(&copy(&src, &dst).unwrap().entries);
            let _ = std::fs::remove_dir_all(&src);
            let _ = std::fs::remove_dir_all(&dst);
            digest
        };
        let ff = digest_of(b"run\xff.sh", "ff");
        let fe = digest_of(b"run\xfe.sh", "fe");
        let replacement = digest_of("run\u{fffd}.sh".as_bytes(), "fffd");
        let escaped_text = digest_of(b"run\\xff.sh", "text");
        // As docs/build-type.md writes it: the invalid byte as `\xff`, the text as `\\xff`.
        let expected = |encoded: &[u8]| {
            let mut h = <sha2::Sha256 as sha2::Digest>::new();
            sha2::Digest::update(&mut h, encoded);
            crate::outputs::hex(&sha2::Digest::finalize(h))
        };
        let sha_same = crate::outputs::hex(&<sha2::Sha256 as sha2::Digest>::digest(b"same\n"));
        assert_eq!(
            ff,
            expected(format!("f run\\xff.sh\0{sha_same}\n").as_bytes())
        );
        assert_eq!(
            escaped_text,
            expected(format!("f run\\\\xff.sh\0{sha_same}\n").as_bytes())
        );
        assert_ne!(ff, fe, "two trees share a digest");
        assert_ne!(ff, replacement, "two trees share a digest");
        assert_ne!(ff, escaped_text, "two trees share a digest");
    }

    #[test]
    fn names_with_newlines_cannot_make_two_trees_share_a_digest() {
        let e = |kind: char, path: &str, content: &str| TreeEntry {
            path: path.into(),
            kind,
            content: content.into(),
        };
        // Under v1 both encode to the bytes `l a\0t\nf b\nx y\0H\n`.
        let one = [e('l', "a", "t"), e('f', "b\nx y", "H")];
        let two = [e('l', "a", "t\nf b"), e('x', "y", "H")];
        assert_ne!(tree_digest(&one), tree_digest(&two));
        // The escape itself is injective: a backslash-n in a name is not a newline.
        assert_ne!(
            tree_digest(&[e('f', "a\\nb", "H")]),
            tree_digest(&[e('f', "a\nb", "H")])
        );
        // Ordinary names digest as under v1.
        let plain = [
            e('d', "src", ""),
            e('f', "src/main.c", "ab"),
            e('l', "cur", "src"),
        ];
        let mut v1 = <sha2::Sha256 as sha2::Digest>::new();
        for x in ["l cur\0src\n", "d src\0\n", "f src/main.c\0ab\n"] {
            sha2::Digest::update(&mut v1, x.as_bytes());
        }
        assert_eq!(
            tree_digest(&plain),
            crate::outputs::hex(&sha2::Digest::finalize(v1))
        );
    }
}
