//! Unpacking a verified download into a directory, refusing anything that could reach outside
//! it or smuggle privileges in.
//!
//! Only a download whose sha256 matched is unpacked, but the pin only says the archive is the
//! one the spec named, not that it is harmless: a tool archive from a compromised release page
//! is pinned just as well. So every entry is checked before anything is written, and the
//! entry is named in the refusal:
//!
//! - paths must be relative and must not contain `..`; names must be UTF-8; a path (and a
//!   link target) may be at most 4096 bytes ([`MAX_PATH_BYTES`]) and 1024 components deep
//!   ([`MAX_DEPTH`], the depth the tree digest walks), checked before anything is created;
//! - a symlink's target must be relative and, resolved inside the tree (following the other
//!   symlinks of the archive, as the kernel would), must stay inside it; this is checked when
//!   the link is written and again once the whole archive is in, so a later link cannot turn
//!   an earlier one into an escape;
//! - a hard link must name a regular file written earlier by the same archive;
//! - devices, fifos and sockets are refused for tools; for a root filesystem
//!   ([`UnpackMode::Rootfs`]) they are skipped (the sandbox provides `/dev`);
//! - setuid/setgid bits are refused on anything but a directory for tools, and stripped for
//!   a root filesystem (and on directories);
//! - an entry that appears twice, or whose parent is a symlink or a file, is refused;
//! - a GNU long-name or long-link entry, or a pax header, over 64 KiB is refused before the
//!   `tar` crate reads it (it would read it whole into memory): see `archive/tar_stream.rs`;
//! - a zip whose end records and central directory are not laid out so that the `zip` crate
//!   reads exactly the directory counted is refused before the crate reads any of it: see
//!   `archive/zip_directory.rs`.
//!
//! Writing goes through descriptors: each parent directory is opened from the tree's root one
//! component at a time with `O_NOFOLLOW` (created with `mkdirat` when missing), and files are
//! created with `O_CREAT | O_EXCL | O_NOFOLLOW`, so even if a check were wrong, writing
//! through a symlink made earlier by the same archive (`a -> /etc`, then `a/passwd`) fails in
//! the kernel with `ELOOP`.
//!
//! What was written is remembered as a tree of nodes, each with its parent and its own name,
//! so the memory for one entry is linear in its path (keyed by full path, one entry 8000
//! levels deep cost 1.8 GB).
//!
//! Bombs: at most [`UnpackLimits::max_entries`] entries (100 000; each directory an entry's
//! path creates and each pax global header counts as one); at most
//! [`UnpackLimits::max_bytes`] decompressed as entry payloads, counted on the bytes actually
//! read, not on sizes the archive declares, and for every entry, not only the files written
//! (a tar's payloads nobody reads are decompressed all the same); at most `max_bytes` written
//! too, each directory and symlink created charged a block ([`NODE_CHARGE`]) and a symlink its
//! target besides (else empty directories and links were free, and the disk reserve could be
//! overrun by hundreds of MB); xz streams may use at most 256 MiB of decoder memory; and the
//! whole unpack may take at most [`UnpackLimits::max_time`] (`fetch.timeout`), since it runs
//! under the digest's lock.
//! `max_bytes` is the smaller of 8 times `fetch.max_bytes` and 100 times the download's own
//! size (at least 256 MiB): tool archives compress 2 to 10 times, deflate alone reaches
//! 1032, so with only the first an 8 MB download could make the runner inflate 16 GiB; 100
//! leaves room for archives of zeros or logs, the floor for small ones. The second bound is
//! not configurable: an archive that expands more than 100 times has to be repacked.
//!
//! Alternatives rejected: `tar::Archive::unpack` and `zip::ZipArchive::extract` (they decide
//! on their own what to skip or sanitize, cannot refuse naming the entry, do not know the
//! rootfs rules, and have had write-through-symlink bugs); `openat2(RESOLVE_BENEATH)` (needs
//! `unsafe` or a new dependency for one call, and the per-component `O_NOFOLLOW` walk gives the
//! same guarantee for a tree nobody else writes); the C `liblzma` (a C build; `lzma-rust2` is
//! pure Rust and also what `zip` uses).

use std::collections::{HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use bulwark_protocol::{format_duration, format_size, ToolFormat};
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, mkdirat, Mode};
use nix::unistd::{linkat, symlinkat};

mod tar_stream;
mod zip_directory;
use tar_stream::TarStream;
use zip_directory::Fenced;

/// What is being unpacked: a tool, or a pinned root filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnpackMode {
    /// A tool: devices, fifos and setuid/setgid files are refused.
    Tool,
    /// A root filesystem: devices and fifos are skipped, setuid/setgid bits stripped.
    Rootfs,
}

/// Bounds on what one archive may unpack to, and how long it may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Most entries of any kind (and directories their paths create).
    pub max_entries: u64,
    /// Most bytes decompressed as entry payloads: file content, and also what extension
    /// headers, directories and links carry (a tar's headers and padding aside); and, apart,
    /// most bytes written: file content, and [`NODE_CHARGE`] for each directory and symlink
    /// created plus the symlink's target.
    pub max_bytes: u64,
    /// What `max_bytes` comes from, for the refusal.
    pub bytes_basis: BytesBasis,
    /// What `max_entries` comes from, for the refusal.
    pub entries_basis: EntriesBasis,
    /// Longest the unpack may take.
    pub max_time: Duration,
}

/// What [`UnpackLimits::max_entries`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EntriesBasis {
    /// The archive rules' own bound.
    #[default]
    Rules,
    /// The inodes left above `limits.min_free_disk` on the store's filesystem.
    DiskReserve,
}

impl std::fmt::Display for EntriesBasis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EntriesBasis::Rules => Ok(()),
            EntriesBasis::DiskReserve => write!(
                f,
                " (the inodes left above limits.min_free_disk on the tool store's filesystem; free some there)"
            ),
        }
    }
}

/// What [`UnpackLimits::max_bytes`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BytesBasis {
    /// [`EXPANSION_FACTOR`] times `fetch.max_bytes`.
    FetchCap,
    /// [`DOWNLOAD_EXPANSION_FACTOR`] times the download's size, at least
    /// [`MIN_UNPACK_BYTES`].
    DownloadSize,
    /// The space left above `limits.min_free_disk` on the store's filesystem.
    DiskReserve,
}

impl std::fmt::Display for BytesBasis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BytesBasis::FetchCap => write!(f, "{EXPANSION_FACTOR} times fetch.max_bytes"),
            BytesBasis::DownloadSize => write!(
                f,
                "{DOWNLOAD_EXPANSION_FACTOR} times the size of the download, at least {}",
                format_size(MIN_UNPACK_BYTES)
            ),
            BytesBasis::DiskReserve => write!(
                f,
                "the space left above limits.min_free_disk on the tool store's filesystem; free space there"
            ),
        }
    }
}

/// Most entries one archive may hold.
pub const MAX_ENTRIES: u64 = 100_000;
/// How many times the download cap an archive may unpack to.
pub const EXPANSION_FACTOR: u64 = 8;
/// How many times its own size an archive may unpack to (but see [`MIN_UNPACK_BYTES`]).
pub const DOWNLOAD_EXPANSION_FACTOR: u64 = 100;
/// What any archive may unpack to, however small.
pub const MIN_UNPACK_BYTES: u64 = 256 << 20;
/// Decoder memory an xz stream may ask for, in KiB (256 MiB).
const XZ_MEM_LIMIT_KIB: u32 = 256 * 1024;
/// Most symlinks followed while resolving one link target (as Linux's `MAXSYMLINKS`).
const MAX_SYMLINK_HOPS: usize = 40;
/// Longest entry path, hard link target or symlink target, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Most components of an entry path: the depth the tree digest walks to
/// (`store::digest_tree`), so a tree that unpacks can also be digested and sealed.
pub const MAX_DEPTH: usize = 1024;
/// What each directory and symlink created costs against [`UnpackLimits::max_bytes`] (a
/// symlink its target's length too): one filesystem block, what ext4 and xfs give an empty
/// directory and a symlink too long to be stored in its inode. Counting file content alone, a
/// zip of 100 000 directories, or of symlinks with 4 KiB targets, wrote some 400 MB past the
/// disk reserve.
pub const NODE_CHARGE: u64 = 4096;

impl UnpackLimits {
    /// The limits for a download of `size` bytes fetched under `fetch.max_bytes` =
    /// `fetch_cap` and `fetch.timeout` = `timeout`: [`MAX_ENTRIES`] entries; the smaller of
    /// [`EXPANSION_FACTOR`] times the cap and [`DOWNLOAD_EXPANSION_FACTOR`] times the download
    /// (at least [`MIN_UNPACK_BYTES`]); `timeout` to unpack.
    pub fn for_download(fetch_cap: u64, size: u64, timeout: Duration) -> UnpackLimits {
        let by_cap = fetch_cap.saturating_mul(EXPANSION_FACTOR);
        let by_size = size
            .saturating_mul(DOWNLOAD_EXPANSION_FACTOR)
            .max(MIN_UNPACK_BYTES);
        let (max_bytes, bytes_basis) = if by_size < by_cap {
            (by_size, BytesBasis::DownloadSize)
        } else {
            (by_cap, BytesBasis::FetchCap)
        };
        UnpackLimits {
            max_entries: MAX_ENTRIES,
            max_bytes,
            bytes_basis,
            entries_basis: EntriesBasis::Rules,
            max_time: timeout,
        }
    }

    /// These limits, with at most `room` bytes and `entries` entries (the space and inodes
    /// left above the disk reserve).
    pub fn within_room(mut self, room: Option<u64>, entries: Option<u64>) -> UnpackLimits {
        if let Some(room) = room.filter(|r| *r < self.max_bytes) {
            self.max_bytes = room;
            self.bytes_basis = BytesBasis::DiskReserve;
        }
        if let Some(entries) = entries.filter(|e| *e < self.max_entries) {
            self.max_entries = entries;
            self.entries_basis = EntriesBasis::DiskReserve;
        }
        self
    }
}

/// Why an archive was not unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// An entry the rules refuse.
    #[error("archive entry {entry}: {reason}")]
    Refused {
        /// The entry's name as stored, quoted, shortened to 200 characters.
        entry: String,
        /// Why.
        reason: String,
    },
    /// More entries than allowed.
    #[error("archive has more than {0} entries{1}")]
    TooManyEntries(u64, EntriesBasis),
    /// More content than allowed.
    #[error("archive unpacks to more than {} ({basis})", format_size(*limit))]
    TooLarge {
        /// [`UnpackLimits::max_bytes`].
        limit: u64,
        /// What it comes from.
        basis: BytesBasis,
    },
    /// Unpacking took longer than allowed.
    #[error(
        "unpacking took longer than {} (fetch.timeout); if the archive is genuine, raise fetch.timeout",
        format_duration(*.0)
    )]
    TimedOut(Duration),
    /// The archive could not be read or decompressed.
    #[error("reading the archive")]
    Read(#[source] io::Error),
    /// A zip archive could not be read.
    #[error("reading the zip archive")]
    Zip(#[source] zip::result::ZipError),
    /// A zip's end records or central directory are not laid out so that the zip crate is
    /// certain to read the directory that was counted: refused before it reads any.
    #[error("zip archive refused: {0}; repack it with a standard zip tool, or ship a tar")]
    ZipLayout(String),
    /// Writing an entry failed.
    #[error("archive entry {entry}: cannot write it")]
    Write {
        /// The entry's name, quoted, shortened to 200 characters.
        entry: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// What an unpack did besides writing entries.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// Entries written (directories, files, links).
    pub entries: u64,
    /// Bytes charged against [`UnpackLimits::max_bytes`] for what was written: file content,
    /// and [`NODE_CHARGE`] for each directory and symlink created plus the symlink's target.
    pub bytes: u64,
    /// Rootfs mode: device nodes and fifos skipped.
    pub skipped: Vec<String>,
    /// Rootfs mode: entries whose setuid/setgid bits were stripped.
    pub stripped: Vec<String>,
}

/// The kind of an archive entry, independent of the archive format.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink(Vec<u8>),
    HardLink(Vec<u8>),
    Device,
    Fifo,
    Socket,
    Unsupported(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    /// A directory and its children by name.
    Dir(HashMap<OsString, NodeId>),
    File,
    Symlink(Vec<u8>),
}

type Key = Vec<OsString>;

/// Unpacks `blob` (format `format`) into `dest`, an existing empty directory. For
/// [`ToolFormat::File`] the blob is copied to `dest/<name>`, mode 0555.
pub fn unpack(
    blob: &Path,
    format: ToolFormat,
    name: &str,
    dest: &Path,
    mode: UnpackMode,
    limits: UnpackLimits,
) -> Result<Unpacked, ArchiveError> {
    let file = File::open(blob).map_err(ArchiveError::Read)?;
    let root: OwnedFd = File::open(dest).map_err(ArchiveError::Read)?.into();
    let mut tree = Tree::new(root, mode, limits);
    match format {
        ToolFormat::TarGz => {
            let gz = flate2::read::MultiGzDecoder::new(BufReader::new(file));
            unpack_tar(gz, &mut tree)?;
        }
        ToolFormat::TarXz => {
            let xz =
                lzma_rust2::XzReader::new_mem_limit(BufReader::new(file), true, XZ_MEM_LIMIT_KIB);
            unpack_tar(xz, &mut tree)?;
        }
        ToolFormat::Zip => unpack_zip(file, &mut tree)?,
        ToolFormat::File => {
            if name.is_empty() || name.starts_with('.') || name.contains('/') {
                return Err(refused(name.as_bytes(), "not a valid tool file name"));
            }
            drop(file);
            link_single_file(blob, name, dest)?;
            tree.done.entries = 1;
        }
    }
    tree.finish()?;
    Ok(tree.done)
}

/// Format `file`: the blob hard-linked as `<dest>/<name>`, mode 0555 (the blob shares the
/// inode, so it is 0555 too). A link rather than a copy: a 256 MiB tool would otherwise be
/// written twice; both names are read-only and runner-owned, and `verify_all` rehashes the
/// blob and the tree alike. Falls back to a copy (`copy_file_range`) across filesystems.
fn link_single_file(blob: &Path, name: &str, dest: &Path) -> Result<(), ArchiveError> {
    let write_err = |source: io::Error| ArchiveError::Write {
        entry: shown(name.as_bytes()),
        source,
    };
    let target = dest.join(name);
    if std::fs::hard_link(blob, &target).is_err() {
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let dir: OwnedFd = File::open(dest).map_err(write_err)?.into();
        let fd = openat(&dir, name, flags, Mode::from_bits_truncate(0o600))
            .map_err(|e| write_err(e.into()))?;
        io::copy(
            &mut File::open(blob).map_err(write_err)?,
            &mut File::from(fd),
        )
        .map_err(write_err)?;
    }
    let opened = openat(
        File::open(dest).map_err(write_err)?,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| write_err(e.into()))?;
    fchmod(&opened, Mode::from_bits_truncate(0o555)).map_err(|e| write_err(e.into()))
}

fn refused(entry: &[u8], reason: impl Into<String>) -> ArchiveError {
    ArchiveError::Refused {
        entry: shown(entry),
        reason: reason.into(),
    }
}

/// Most characters of an entry name or link target a message shows.
const SHOWN_CHARS: usize = 200;

/// An entry name or link target for a message: quoted, lossy UTF-8, at most [`SHOWN_CHARS`]
/// characters, then `…` and the full length (`"a/a/a"… (8001 bytes)`). Names come from the
/// archive and may be as long as an extension header allows; a message (and so a log line or
/// `result.json`) must not be.
fn shown(raw: &[u8]) -> String {
    shown_part(raw, raw.len() as u64)
}

/// Like [`shown`], for `head`, the first bytes of a name `len` bytes long.
fn shown_part(head: &[u8], len: u64) -> String {
    let head = &head[..head.len().min(4 * SHOWN_CHARS)];
    let text = String::from_utf8_lossy(head);
    let mut chars = text.chars();
    let short: String = chars.by_ref().take(SHOWN_CHARS).collect();
    if chars.next().is_some() || (head.len() as u64) < len {
        format!("{short:?}… ({len} bytes)")
    } else {
        format!("{short:?}")
    }
}

/// An entry name for the lists in [`Unpacked`]: unquoted, shortened like [`shown`].
fn listed(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(&raw[..raw.len().min(4 * SHOWN_CHARS)]);
    let short: String = text.chars().take(SHOWN_CHARS).collect();
    if short.len() < raw.len() {
        format!("{short}…")
    } else {
        short
    }
}

/// Unpacks a decompressed tar stream, read through [`TarStream`]: when it stops the stream,
/// its reason is reported rather than the read error the crate saw.
fn unpack_tar(reader: impl Read, tree: &mut Tree) -> Result<(), ArchiveError> {
    let mut stream = TarStream::new(reader, tree.limits, tree.deadline);
    let result = unpack_tar_entries(&mut stream, tree);
    stream.refusal().map_or(result, Err)
}

fn unpack_tar_entries(reader: impl Read, tree: &mut Tree) -> Result<(), ArchiveError> {
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(ArchiveError::Read)? {
        let mut entry = entry.map_err(ArchiveError::Read)?;
        let header = entry.header();
        let perm = header.mode().map_err(ArchiveError::Read)?;
        let link = || {
            entry
                .link_name_bytes()
                .map(|l| l.into_owned())
                .unwrap_or_default()
        };
        use tar::EntryType as T;
        let kind = match header.entry_type() {
            T::Regular | T::Continuous => Kind::File,
            T::Directory => Kind::Dir,
            T::Symlink => Kind::Symlink(link()),
            T::Link => Kind::HardLink(link()),
            T::Char | T::Block => Kind::Device,
            T::Fifo => Kind::Fifo,
            T::XGlobalHeader => {
                // Nothing to write, but it was decompressed: it counts.
                tree.count()?;
                continue;
            }
            other => Kind::Unsupported(format!("{other:?}")),
        };
        let path = entry.path_bytes().into_owned();
        tree.add(&path, kind, perm, &mut entry)?;
    }
    Ok(())
}

fn unpack_zip(mut file: File, tree: &mut Tree) -> Result<(), ArchiveError> {
    // The entry count is read from the end records, and the directory walked, before the zip
    // crate reads the directory: it holds every record in memory (several times the archive's
    // own bytes), so the limit must apply first, and the crate must read the very directory
    // counted (`archive/zip_directory.rs`). And it keys entries by name, a repeated name
    // replacing the earlier one, so a count that differs from what it kept is a name given
    // twice (which extractors resolve differently: refused, as in a tar).
    let directory = zip_directory::end_records(&mut file)?;
    let listed = directory.entries;
    if listed > tree.limits.max_entries {
        return Err(ArchiveError::TooManyEntries(
            tree.limits.max_entries,
            tree.limits.entries_basis,
        ));
    }
    zip_directory::walk(&mut file, &directory, tree.limits, tree.deadline)?;
    let (reader, fence) =
        Fenced::new(BufReader::new(file), directory.start).map_err(ArchiveError::Read)?;
    let archive = zip::ZipArchive::new(reader);
    fence.lift();
    let mut archive = archive.map_err(ArchiveError::Zip)?;
    if archive.len() as u64 != listed {
        return Err(ArchiveError::Refused {
            entry: "(central directory)".into(),
            reason: format!(
                "it lists {listed} entries under {} distinct names: a name given twice is \
                 refused (extractors disagree on which copy wins)",
                archive.len()
            ),
        });
    }
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(ArchiveError::Zip)?;
        let path = entry.name_raw().to_vec();
        let st_mode = entry.unix_mode().unwrap_or(0);
        let kind = match st_mode & 0o170000 {
            _ if entry.is_dir() => Kind::Dir,
            0o120000 => {
                let mut target = Vec::new();
                (&mut entry)
                    .take(MAX_PATH_BYTES as u64 + 1)
                    .read_to_end(&mut target)
                    .map_err(ArchiveError::Read)?;
                Kind::Symlink(target)
            }
            0o020000 | 0o060000 => Kind::Device,
            0o010000 => Kind::Fifo,
            0o140000 => Kind::Socket,
            _ => Kind::File,
        };
        let mut timed = Timed {
            inner: &mut entry,
            deadline: tree.deadline,
        };
        tree.add(&path, kind, st_mode & 0o7777, &mut timed)?;
    }
    Ok(())
}

/// A reader that fails once `deadline` has passed: a zip entry's content, decompressed as it
/// is written.
struct Timed<R> {
    inner: R,
    deadline: Instant,
}

impl<R: Read> Read for Timed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if Instant::now() >= self.deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "unpack deadline"));
        }
        self.inner.read(buf)
    }
}

impl UnpackLimits {
    fn too_large(&self) -> ArchiveError {
        ArchiveError::TooLarge {
            limit: self.max_bytes,
            basis: self.bytes_basis,
        }
    }
}

/// Splits an entry path into components, refusing absolute paths, `..`, non-UTF-8, and paths
/// longer than [`MAX_PATH_BYTES`] or deeper than [`MAX_DEPTH`]. The bounds come first, so a
/// refused path costs one pass over its bytes and nothing else.
fn split(raw: &[u8]) -> Result<Key, String> {
    if raw.len() > MAX_PATH_BYTES {
        return Err(format!("the path is longer than {MAX_PATH_BYTES} bytes"));
    }
    if std::str::from_utf8(raw).is_err() {
        return Err("the name is not valid UTF-8".to_owned());
    }
    if raw.first() == Some(&b'/') {
        return Err("absolute path".to_owned());
    }
    if raw.contains(&0) {
        return Err("the name contains a NUL byte".to_owned());
    }
    let mut out = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("the path climbs out with \"..\"".to_owned()),
            name => out.push(OsStr::from_bytes(name).to_os_string()),
        }
    }
    if out.len() > MAX_DEPTH {
        return Err(format!(
            "the path is {} components deep, more than the {MAX_DEPTH} allowed",
            out.len()
        ));
    }
    Ok(out)
}

/// Components joined with `/`, as bytes (for messages).
fn join(parts: &[OsString]) -> Vec<u8> {
    parts
        .iter()
        .map(|p| p.as_bytes())
        .collect::<Vec<_>>()
        .join(&b'/')
}

/// Where a node is in [`Tree::nodes`]; the tree's root is [`ROOT`].
type NodeId = usize;
const ROOT: NodeId = 0;

/// One directory, file or symlink written, with its parent and its own name only: the map
/// of a tree costs memory linear in its names (keying by full path cost the square of the
/// depth for one deep entry).
#[derive(Debug)]
struct NodeEntry {
    parent: NodeId,
    name: OsString,
    node: Node,
}

struct Tree {
    root: OwnedFd,
    mode: UnpackMode,
    limits: UnpackLimits,
    /// Everything written so far, [`ROOT`] first.
    nodes: Vec<NodeEntry>,
    /// Entries and the directories their paths created, against `limits.max_entries`.
    counted: u64,
    /// When the unpack must have ended (`limits.max_time` from its start).
    deadline: Instant,
    done: Unpacked,
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

impl Tree {
    fn new(root: OwnedFd, mode: UnpackMode, limits: UnpackLimits) -> Tree {
        Tree {
            root,
            mode,
            limits,
            nodes: vec![NodeEntry {
                parent: ROOT,
                name: OsString::new(),
                node: Node::Dir(HashMap::new()),
            }],
            counted: 0,
            deadline: Instant::now() + limits.max_time,
            done: Unpacked::default(),
        }
    }

    /// Fails once the unpack has taken `max_time`.
    fn check_time(&self) -> Result<(), ArchiveError> {
        if Instant::now() >= self.deadline {
            return Err(ArchiveError::TimedOut(self.limits.max_time));
        }
        Ok(())
    }

    /// A read error, or the deadline when that is what stopped the read ([`Timed`]).
    fn read_error(&self, e: io::Error) -> ArchiveError {
        self.check_time().err().unwrap_or(ArchiveError::Read(e))
    }

    /// Charges `bytes` written against `max_bytes`, with everything written so far; refuses
    /// before writing what would go past it.
    fn charge(&mut self, bytes: u64) -> Result<(), ArchiveError> {
        let total = self.done.bytes.saturating_add(bytes);
        if total > self.limits.max_bytes {
            return Err(self.limits.too_large());
        }
        self.done.bytes = total;
        Ok(())
    }

    /// Counts one more thing against `max_entries`: an entry, or a directory an entry's path
    /// creates (`a/b/c/f` alone creates three).
    fn count(&mut self) -> Result<(), ArchiveError> {
        self.counted += 1;
        if self.counted > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries(
                self.limits.max_entries,
                self.limits.entries_basis,
            ));
        }
        Ok(())
    }

    fn child(&self, dir: NodeId, name: &OsStr) -> Option<NodeId> {
        match &self.nodes[dir].node {
            Node::Dir(children) => children.get(name).copied(),
            _ => None,
        }
    }

    fn lookup(&self, key: &[OsString]) -> Option<&Node> {
        let mut id = ROOT;
        for name in key {
            id = self.child(id, name)?;
        }
        Some(&self.nodes[id].node)
    }

    fn insert(&mut self, parent: NodeId, name: &OsStr, node: Node) -> NodeId {
        let id = self.nodes.len();
        self.nodes.push(NodeEntry {
            parent,
            name: name.to_os_string(),
            node,
        });
        if let Node::Dir(children) = &mut self.nodes[parent].node {
            children.insert(name.to_os_string(), id);
        }
        id
    }

    /// The nodes from below the root down to `id`, inclusive (empty for the root).
    fn chain(&self, mut id: NodeId) -> Vec<NodeId> {
        let mut out = Vec::new();
        while id != ROOT {
            out.push(id);
            id = self.nodes[id].parent;
        }
        out.reverse();
        out
    }

    /// The path of `id` below the root, as bytes (for messages).
    fn path_of(&self, id: NodeId) -> Vec<u8> {
        let names: Vec<OsString> = self
            .chain(id)
            .into_iter()
            .map(|n| self.nodes[n].name.clone())
            .collect();
        join(&names)
    }

    fn add(
        &mut self,
        raw: &[u8],
        kind: Kind,
        perm: u32,
        content: &mut dyn Read,
    ) -> Result<(), ArchiveError> {
        self.done.entries += 1;
        self.count()?;
        self.check_time()?;
        let key = split(raw).map_err(|reason| refused(raw, reason))?;
        let listed = listed(raw);
        let tool = self.mode == UnpackMode::Tool;
        match &kind {
            Kind::Device | Kind::Fifo | Kind::Socket if !tool => {
                self.done.skipped.push(listed);
                return Ok(());
            }
            Kind::Device => return Err(refused(raw, "device node")),
            Kind::Fifo => return Err(refused(raw, "fifo")),
            Kind::Socket => return Err(refused(raw, "socket")),
            Kind::Unsupported(what) => {
                return Err(refused(raw, format!("unsupported entry type {what}")))
            }
            Kind::Symlink(target) if target.len() > MAX_PATH_BYTES => {
                return Err(refused(
                    raw,
                    format!("symlink target longer than {MAX_PATH_BYTES} bytes"),
                ))
            }
            _ => {}
        }
        if perm & 0o6000 != 0 && kind != Kind::Dir {
            if tool {
                return Err(refused(raw, "carries setuid/setgid bits"));
            }
            self.done.stripped.push(listed);
        }
        let Some((name, parents)) = key.split_last() else {
            return match kind {
                Kind::Dir => Ok(()),
                _ => Err(refused(raw, "empty path")),
            };
        };
        match (self.lookup(&key), &kind) {
            (Some(Node::Dir(_)), Kind::Dir) => return Ok(()),
            (Some(_), _) => return Err(refused(raw, "appears twice in the archive")),
            (None, _) => {}
        }
        let write_err = |source: io::Error| ArchiveError::Write {
            entry: shown(raw),
            source,
        };
        let (parent, parent_id) = self.open_parent(parents, true, raw)?;
        let node = match kind {
            Kind::Dir => {
                self.charge(NODE_CHARGE)?;
                mkdirat(&parent, name.as_os_str(), Mode::from_bits_truncate(0o755))
                    .map_err(|e| write_err(e.into()))?;
                Node::Dir(HashMap::new())
            }
            Kind::File => {
                let flags = OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC;
                let fd = openat(
                    &parent,
                    name.as_os_str(),
                    flags,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| write_err(e.into()))?;
                let mut file = File::from(fd);
                let room = self.limits.max_bytes.saturating_sub(self.done.bytes);
                let copied = io::copy(&mut content.take(room.saturating_add(1)), &mut file)
                    .map_err(|e| self.read_error(e))?;
                if copied > room {
                    return Err(self.limits.too_large());
                }
                self.done.bytes += copied;
                file.flush().map_err(write_err)?;
                let exec = if perm & 0o111 != 0 { 0o555 } else { 0o444 };
                fchmod(&file, Mode::from_bits_truncate(exec)).map_err(|e| write_err(e.into()))?;
                Node::File
            }
            Kind::Symlink(target) => {
                self.check_link_target(parent_id, &target)
                    .map_err(|reason| refused(raw, reason))?;
                self.charge(NODE_CHARGE.saturating_add(target.len() as u64))?;
                symlinkat(OsStr::from_bytes(&target), &parent, name.as_os_str())
                    .map_err(|e| write_err(e.into()))?;
                Node::Symlink(target)
            }
            Kind::HardLink(target) => {
                let target_key = split(&target)
                    .map_err(|reason| refused(raw, format!("hard link target: {reason}")))?;
                let Some((target_name, target_parents)) = target_key.split_last() else {
                    return Err(refused(raw, "hard link to an empty path"));
                };
                if !matches!(self.lookup(&target_key), Some(Node::File)) {
                    let reason = format!(
                        "hard link to {}, which is not a file earlier in the archive",
                        shown(&target)
                    );
                    return Err(refused(raw, reason));
                }
                let (target_parent, _) = self.open_parent(target_parents, false, raw)?;
                linkat(
                    &target_parent,
                    target_name.as_os_str(),
                    &parent,
                    name.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| write_err(e.into()))?;
                Node::File
            }
            Kind::Device | Kind::Fifo | Kind::Socket | Kind::Unsupported(_) => {
                return Err(refused(raw, "unsupported entry type"))
            }
        };
        self.insert(parent_id, name, node);
        Ok(())
    }

    /// Opens the directory `parents` below the root, one component at a time without
    /// following symlinks, creating missing ones when `create` (each counted as an entry).
    /// Returns the directory and its node.
    fn open_parent(
        &mut self,
        parents: &[OsString],
        create: bool,
        raw: &[u8],
    ) -> Result<(OwnedFd, NodeId), ArchiveError> {
        let mut fd = openat(&self.root, ".", DIR_FLAGS, Mode::empty())
            .map_err(|e| ArchiveError::Read(e.into()))?;
        let mut id = ROOT;
        for depth in 1..=parents.len() {
            let prefix = &parents[..depth];
            let name = prefix[depth - 1].as_os_str();
            let prefix_shown = || shown(&join(prefix));
            id = match self.child(id, name).map(|c| (c, &self.nodes[c].node)) {
                Some((_, Node::Symlink(_))) => {
                    return Err(refused(
                        raw,
                        format!("the path goes through the symlink {}", prefix_shown()),
                    ))
                }
                Some((_, Node::File)) => {
                    return Err(refused(
                        raw,
                        format!("the path goes through the file {}", prefix_shown()),
                    ))
                }
                Some((child, Node::Dir(_))) => child,
                None if create => {
                    self.count()?;
                    self.charge(NODE_CHARGE)?;
                    mkdirat(&fd, name, Mode::from_bits_truncate(0o755)).map_err(|e| {
                        refused(raw, format!("cannot create {}: {e}", prefix_shown()))
                    })?;
                    self.insert(id, name, Node::Dir(HashMap::new()))
                }
                None => return Err(refused(raw, format!("{} does not exist", prefix_shown()))),
            };
            fd = openat(&fd, name, DIR_FLAGS, Mode::empty()).map_err(|e| match e {
                Errno::ELOOP | Errno::ENOTDIR => refused(
                    raw,
                    format!(
                        "the path goes through {}, which is not a directory",
                        prefix_shown()
                    ),
                ),
                e => ArchiveError::Write {
                    entry: shown(raw),
                    source: e.into(),
                },
            })?;
        }
        Ok((fd, id))
    }

    /// Resolves `target` from the directory `from` inside the tree, following the archive's
    /// own symlinks like the kernel would; refuses absolute targets and any escape. The walk
    /// keeps, per component, the node it names, or `None` past the part that exists so far
    /// (a later entry may create it; [`Tree::finish`] looks again).
    fn check_link_target(&self, from: NodeId, target: &[u8]) -> Result<(), String> {
        let quoted = || shown(target);
        if target.is_empty() {
            return Err("symlink with an empty target".to_owned());
        }
        if std::str::from_utf8(target).is_err() {
            return Err("symlink target is not valid UTF-8".to_owned());
        }
        if target.first() == Some(&b'/') {
            return Err(format!("symlink target {} is absolute", quoted()));
        }
        let mut current: Vec<Option<NodeId>> = self.chain(from).into_iter().map(Some).collect();
        let mut queue: VecDeque<&[u8]> = target.split(|b| *b == b'/').collect();
        let mut hops = 0;
        while let Some(part) = queue.pop_front() {
            match part {
                b"" | b"." => {}
                b".." => {
                    if current.pop().is_none() {
                        return Err(format!(
                            "symlink target {} points outside the directory",
                            quoted()
                        ));
                    }
                }
                name => {
                    let dir = current.last().copied().unwrap_or(Some(ROOT));
                    let next = dir.and_then(|d| self.child(d, OsStr::from_bytes(name)));
                    match next.map(|n| &self.nodes[n].node) {
                        Some(Node::Symlink(link)) => {
                            hops += 1;
                            if hops > MAX_SYMLINK_HOPS {
                                return Err(format!(
                                    "symlink target {} has too many levels of symlinks",
                                    quoted()
                                ));
                            }
                            if link.first() == Some(&b'/') {
                                return Err(format!(
                                    "symlink target {} goes through an absolute symlink",
                                    quoted()
                                ));
                            }
                            for p in link.rsplit(|b| *b == b'/') {
                                queue.push_front(p);
                            }
                        }
                        _ => current.push(next),
                    }
                }
            }
        }
        Ok(())
    }

    /// Rechecks every symlink against the finished tree: a link added later may have turned
    /// an earlier one into an escape (`a -> b/c/..` written before `b/c -> ..`).
    fn finish(&self) -> Result<(), ArchiveError> {
        for (id, entry) in self.nodes.iter().enumerate() {
            if let Node::Symlink(target) = &entry.node {
                self.check_time()?;
                if let Err(reason) = self.check_link_target(entry.parent, target) {
                    return Err(refused(&self.path_of(id), reason));
                }
            }
        }
        Ok(())
    }
}

/// Makes an unpacked tree read-only: directories 0555, files 0444, or 0555 when any execute
/// bit was set; symlinks are left alone (their mode means nothing). Walks through
/// descriptors and never follows a symlink.
pub fn make_read_only(dir: &Path) -> io::Result<()> {
    let fd: OwnedFd = File::open(dir)?.into();
    seal(&fd, 0)?;
    fchmod(&fd, Mode::from_bits_truncate(0o555))?;
    Ok(())
}

fn seal(dir: &OwnedFd, depth: usize) -> io::Result<()> {
    use crate::fsutil::Kind as K;
    if depth > 4096 {
        return Err(io::Error::other("tree too deep"));
    }
    for entry in crate::fsutil::read_entries(dir)? {
        match entry.kind {
            K::Dir => {
                let child = openat(dir, entry.name.as_os_str(), DIR_FLAGS, Mode::empty())?;
                seal(&child, depth + 1)?;
                fchmod(&child, Mode::from_bits_truncate(0o555))?;
            }
            K::File => {
                let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let child = openat(dir, entry.name.as_os_str(), flags, Mode::empty())?;
                let perm = if entry.mode & 0o111 != 0 {
                    0o555
                } else {
                    0o444
                };
                fchmod(&child, Mode::from_bits_truncate(perm))?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::testutil::{
        dir, file, link, listing, special, tar_gz, zip_bytes, TarEntry, TempDir,
    };
    use std::os::unix::fs::PermissionsExt;
    use tar::EntryType as T;

    /// Limits for the unpack tests (also `tar_stream`'s).
    pub(super) const LIMITS: UnpackLimits = UnpackLimits {
        max_entries: 1000,
        max_bytes: 1 << 20,
        bytes_basis: BytesBasis::FetchCap,
        entries_basis: crate::tools::archive::EntriesBasis::Rules,
        max_time: Duration::from_secs(60),
    };

    /// Unpacks `bytes` into `<tmp>/work/dest`; returns the temp dir (to check that nothing
    /// appeared next to `dest`) and the result.
    fn run(
        bytes: &[u8],
        format: ToolFormat,
        mode: UnpackMode,
        limits: UnpackLimits,
    ) -> (TempDir, Result<Unpacked, ArchiveError>) {
        let tmp = TempDir::new("archive");
        let blob = tmp.path().join("blob");
        std::fs::write(&blob, bytes).unwrap();
        let work = tmp.path().join("work");
        let dest = work.join("dest");
        std::fs::create_dir_all(&dest).unwrap();
        let result = unpack(&blob, format, "mytool", &dest, mode, limits);
        (tmp, result)
    }

    fn refusal(entries: &[TarEntry], mode: UnpackMode) -> String {
        let (tmp, result) = run(&tar_gz(entries), ToolFormat::TarGz, mode, LIMITS);
        let err = result.expect_err("must be refused").to_string();
        let work = tmp.path().join("work");
        let outside: Vec<String> = listing(&work)
            .into_iter()
            .filter(|p| !p.starts_with("dest"))
            .collect();
        assert!(outside.is_empty(), "written outside dest: {outside:?}");
        assert_eq!(
            listing(tmp.path())
                .iter()
                .filter(|p| !p.starts_with("work") && *p != "blob")
                .count(),
            0
        );
        err
    }

    #[test]
    fn a_plain_tar_gz_unpacks_with_its_files_links_and_exec_bits_and_seals_read_only() {
        let entries = [
            dir("jq-1.7/"),
            dir("jq-1.7/bin/"),
            file("jq-1.7/bin/jq", 0o755, b"#!/bin/sh\necho jq\n"),
            file("jq-1.7/README", 0o644, b"readme"),
            link("jq-1.7/bin/jq2", T::Symlink, "jq"),
            link("jq-1.7/share/doc", T::Symlink, "../README"),
            link("jq-1.7/README.hard", T::Link, "jq-1.7/README"),
            file("implicit/parent/file", 0o600, b"x"),
        ];
        let (tmp, result) = run(
            &tar_gz(&entries),
            ToolFormat::TarGz,
            UnpackMode::Tool,
            LIMITS,
        );
        let done = result.expect("unpacks");
        assert_eq!(done.entries, 8);
        let dest = tmp.path().join("work/dest");
        make_read_only(&dest).unwrap();
        let mode = |p: &str| {
            std::fs::symlink_metadata(dest.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(
            std::fs::read(dest.join("jq-1.7/bin/jq")).unwrap(),
            b"#!/bin/sh\necho jq\n"
        );
        assert_eq!(mode("jq-1.7/bin/jq"), 0o555);
        assert_eq!(mode("jq-1.7/README"), 0o444);
        assert_eq!(mode("implicit/parent/file"), 0o444);
        assert_eq!(mode("jq-1.7/bin"), 0o555);
        assert_eq!(mode(""), 0o555);
        assert_eq!(
            std::fs::read_link(dest.join("jq-1.7/bin/jq2")).unwrap(),
            Path::new("jq")
        );
        assert_eq!(
            std::fs::read(dest.join("jq-1.7/README.hard")).unwrap(),
            b"readme"
        );
    }

    #[test]
    fn a_dotdot_entry_is_refused_naming_it_and_nothing_is_written_outside() {
        let err = refusal(&[file("../evil", 0o644, b"x")], UnpackMode::Tool);
        assert_eq!(
            err,
            "archive entry \"../evil\": the path climbs out with \"..\""
        );
        let err = refusal(
            &[dir("a/"), file("a/../../evil", 0o644, b"x")],
            UnpackMode::Rootfs,
        );
        assert!(err.contains("\"a/../../evil\""), "{err}");
    }

    #[test]
    fn an_absolute_entry_is_refused_naming_it() {
        let err = refusal(&[file("/tmp/evil", 0o644, b"x")], UnpackMode::Tool);
        assert_eq!(err, "archive entry \"/tmp/evil\": absolute path");
    }

    #[test]
    fn symlinks_that_escape_are_refused_naming_the_entry() {
        let err = refusal(
            &[link("bin/up", T::Symlink, "../../etc/passwd")],
            UnpackMode::Tool,
        );
        assert!(
            err.starts_with(
                "archive entry \"bin/up\": symlink target \"../../etc/passwd\" points outside"
            ),
            "{err}"
        );
        let err = refusal(&[link("etc", T::Symlink, "/etc")], UnpackMode::Rootfs);
        assert_eq!(
            err,
            "archive entry \"etc\": symlink target \"/etc\" is absolute"
        );
        // An escape through another link: `b/c -> ..` makes `a -> b/c/..` climb out.
        let chain = [
            link("b/c", T::Symlink, ".."),
            link("a", T::Symlink, "b/c/.."),
        ];
        assert!(refusal(&chain, UnpackMode::Tool)
            .contains("\"a\": symlink target \"b/c/..\" points outside"));
        // The same, with the links in the other order: caught once the archive is in.
        let chain = [
            link("a", T::Symlink, "b/c/.."),
            link("b/c", T::Symlink, ".."),
        ];
        assert!(refusal(&chain, UnpackMode::Tool).contains("\"a\": symlink target"));
        let lp = [
            link("x", T::Symlink, "y"),
            link("y", T::Symlink, "x"),
            link("z", T::Symlink, "x/q"),
        ];
        assert!(refusal(&lp, UnpackMode::Tool).contains("too many levels"));
    }

    #[test]
    fn writing_through_a_symlink_from_the_same_archive_is_refused() {
        let entries = [
            dir("sub/"),
            link("a", T::Symlink, "sub"),
            file("a/passwd", 0o644, b"x"),
        ];
        let err = refusal(&entries, UnpackMode::Tool);
        assert_eq!(
            err,
            "archive entry \"a/passwd\": the path goes through the symlink \"a\""
        );
        // Even a symlink the checks do not know about (planted in the directory beforehand)
        // is not followed: the kernel refuses with O_NOFOLLOW / mkdirat.
        let tmp = TempDir::new("plant");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let dest = tmp.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("a")).unwrap();
        let blob = tmp.path().join("blob");
        std::fs::write(&blob, tar_gz(&[file("a/passwd", 0o644, b"x")])).unwrap();
        let err = unpack(
            &blob,
            ToolFormat::TarGz,
            "t",
            &dest,
            UnpackMode::Tool,
            LIMITS,
        )
        .expect_err("refused");
        assert!(
            err.to_string().starts_with("archive entry \"a/passwd\""),
            "{err}"
        );
        assert!(listing(&outside).is_empty());
    }

    #[test]
    fn long_names_and_link_targets_are_shortened_in_refusals() {
        // Names this long come in GNU `L`/`K` entries; the message shows 200 characters of
        // each, then the full length, so a log line or result.json stays small.
        let name = format!("../{}", "x".repeat(4000));
        let err = refusal(&[file(&name, 0o644, b"x")], UnpackMode::Tool);
        assert_eq!(
            err,
            format!(
                "archive entry \"../{}\"… (4003 bytes): the path climbs out with \"..\"",
                "x".repeat(197)
            )
        );
        let target = format!("/{}", "y".repeat(3000));
        let err = refusal(&[link(&name[3..], T::Symlink, &target)], UnpackMode::Tool);
        assert!(
            err.ends_with(&format!("/{}\"… (3001 bytes) is absolute", "y".repeat(199))),
            "{err}"
        );
        assert!(
            err.len() < 2 * SHOWN_CHARS + 100,
            "{} bytes: {err}",
            err.len()
        );
        let err = refusal(&[link("h", T::Link, &target[1..])], UnpackMode::Tool);
        assert!(
            err.starts_with("archive entry \"h\": hard link to \"yyy")
                && err.contains("\"… (3000 bytes), which is not a file earlier"),
            "{err}"
        );
    }

    #[test]
    fn hard_links_must_name_an_earlier_file_of_the_archive() {
        let err = refusal(&[link("h", T::Link, "/etc/shadow")], UnpackMode::Tool);
        assert_eq!(err, "archive entry \"h\": hard link target: absolute path");
        let err = refusal(&[link("h", T::Link, "../x")], UnpackMode::Tool);
        assert!(err.contains("climbs out"), "{err}");
        let err = refusal(
            &[link("h", T::Link, "later"), file("later", 0o644, b"")],
            UnpackMode::Tool,
        );
        assert!(err.contains("not a file earlier in the archive"), "{err}");
    }

    #[test]
    fn devices_and_fifos_are_refused_for_tools_and_skipped_for_a_rootfs() {
        let err = refusal(&[special("dev/sda", T::Block, 0o600)], UnpackMode::Tool);
        assert_eq!(err, "archive entry \"dev/sda\": device node");
        let err = refusal(&[special("dev/null", T::Char, 0o666)], UnpackMode::Tool);
        assert_eq!(err, "archive entry \"dev/null\": device node");
        let err = refusal(&[special("pipe", T::Fifo, 0o644)], UnpackMode::Tool);
        assert_eq!(err, "archive entry \"pipe\": fifo");
        let entries = [
            special("dev/null", T::Char, 0o666),
            special("pipe", T::Fifo, 0o644),
            file("bin/sh", 0o755, b"sh"),
        ];
        let (tmp, result) = run(
            &tar_gz(&entries),
            ToolFormat::TarGz,
            UnpackMode::Rootfs,
            LIMITS,
        );
        let done = result.expect("rootfs unpacks");
        assert_eq!(done.skipped, ["dev/null", "pipe"]);
        assert_eq!(listing(&tmp.path().join("work/dest")), ["bin", "bin/sh"]);
    }

    #[test]
    fn setuid_files_are_refused_for_tools_and_stripped_for_a_rootfs() {
        let err = refusal(&[file("bin/su", 0o4755, b"su")], UnpackMode::Tool);
        assert_eq!(err, "archive entry \"bin/su\": carries setuid/setgid bits");
        let err = refusal(&[file("bin/wall", 0o2755, b"w")], UnpackMode::Tool);
        assert!(err.contains("setuid/setgid"), "{err}");
        let (tmp, result) = run(
            &tar_gz(&[file("bin/su", 0o4755, b"su")]),
            ToolFormat::TarGz,
            UnpackMode::Rootfs,
            LIMITS,
        );
        assert_eq!(result.expect("rootfs").stripped, ["bin/su"]);
        let mode = std::fs::metadata(tmp.path().join("work/dest/bin/su"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o555);
    }

    #[test]
    fn duplicates_and_paths_through_files_are_refused() {
        let err = refusal(
            &[file("a", 0o644, b"1"), file("a", 0o644, b"2")],
            UnpackMode::Tool,
        );
        assert_eq!(err, "archive entry \"a\": appears twice in the archive");
        let err = refusal(
            &[file("a", 0o644, b"1"), file("a/b", 0o644, b"2")],
            UnpackMode::Tool,
        );
        assert_eq!(
            err,
            "archive entry \"a/b\": the path goes through the file \"a\""
        );
    }

    #[test]
    fn bombs_are_stopped_by_entry_count_and_written_bytes() {
        let limits = UnpackLimits {
            max_entries: 3,
            max_bytes: 100,
            ..LIMITS
        };
        let many: Vec<TarEntry> = (0..5).map(|i| file(&format!("f{i}"), 0o644, b"")).collect();
        let (_t, r) = run(&tar_gz(&many), ToolFormat::TarGz, UnpackMode::Tool, limits);
        assert_eq!(
            r.expect_err("too many").to_string(),
            "archive has more than 3 entries"
        );
        let big = [file("a", 0o644, &[0u8; 60]), file("b", 0o644, &[0u8; 60])];
        let (_t, r) = run(&tar_gz(&big), ToolFormat::TarGz, UnpackMode::Tool, limits);
        assert_eq!(
            r.expect_err("too big").to_string(),
            "archive unpacks to more than 100B (8 times fetch.max_bytes)"
        );
        let zip = zip_bytes(&[("z", 0o644, &[7u8; 500])]);
        let (_t, r) = run(&zip, ToolFormat::Zip, UnpackMode::Tool, limits);
        assert!(
            matches!(r, Err(ArchiveError::TooLarge { limit: 100, .. })),
            "{r:?}"
        );
    }

    #[test]
    fn a_path_too_long_or_too_deep_is_refused_before_anything_is_written() {
        // 8000 levels: the review's archive (1.8 GB and 12.7 s when every level was kept
        // under its full path); 1101 levels: short enough, too deep for the tree digest.
        for (depth, reason) in [
            (8000, "the path is longer than 4096 bytes".to_owned()),
            (
                1100,
                "the path is 1101 components deep, more than the 1024 allowed".to_owned(),
            ),
        ] {
            let name = format!("{}f", "a/".repeat(depth));
            let (tmp, result) = run(
                &tar_gz(&[file(&name, 0o644, b"x")]),
                ToolFormat::TarGz,
                UnpackMode::Tool,
                LIMITS,
            );
            let err = result.expect_err("too deep").to_string();
            let head = "a/".repeat(100);
            let expected = format!("archive entry \"{head}\"… ({} bytes): {reason}", name.len());
            assert_eq!(err, expected);
            assert_eq!(listing(&tmp.path().join("work")), ["dest"], "{depth}");
        }
        let target = "t/".repeat(2100);
        let err = refusal(&[link("l", T::Symlink, &target)], UnpackMode::Tool);
        assert_eq!(
            err,
            "archive entry \"l\": symlink target longer than 4096 bytes"
        );
    }

    #[test]
    fn the_deepest_path_allowed_unpacks_and_its_tree_can_be_digested() {
        // 1023 directories, each charged a block.
        let limits = UnpackLimits {
            max_entries: 2 * MAX_DEPTH as u64,
            max_bytes: MAX_DEPTH as u64 * NODE_CHARGE,
            ..LIMITS
        };
        let name = format!("{}f", "d/".repeat(MAX_DEPTH - 1));
        let (tmp, result) = run(
            &tar_gz(&[file(&name, 0o644, b"deep")]),
            ToolFormat::TarGz,
            UnpackMode::Tool,
            limits,
        );
        result.expect("1024 components unpack");
        let dest = tmp.path().join("work/dest");
        assert_eq!(std::fs::read(dest.join(&name)).unwrap(), b"deep");
        crate::tools::store::digest_tree(&dest).expect("the digest walks as deep");
        // The map of the tree keeps each directory's name once: linear in the path.
        let tree_dir = TempDir::new("deep-tree");
        let root: OwnedFd = File::open(tree_dir.path()).unwrap().into();
        let mut tree = Tree::new(root, UnpackMode::Tool, limits);
        tree.add(name.as_bytes(), Kind::File, 0o644, &mut io::empty())
            .unwrap();
        let stored: usize = tree.nodes.iter().map(|n| n.name.len()).sum();
        assert_eq!((tree.nodes.len(), stored), (MAX_DEPTH + 1, MAX_DEPTH));
    }

    #[test]
    fn directories_an_entry_path_creates_count_against_the_entry_limit() {
        let limits = UnpackLimits {
            max_entries: 50,
            ..LIMITS
        };
        let name = format!("{}f", "d/".repeat(60));
        let (tmp, r) = run(
            &tar_gz(&[file(&name, 0o644, b"x")]),
            ToolFormat::TarGz,
            UnpackMode::Tool,
            limits,
        );
        assert_eq!(
            r.expect_err("too many").to_string(),
            "archive has more than 50 entries"
        );
        let made = listing(&tmp.path().join("work/dest")).len();
        assert_eq!(
            made, 49,
            "the entry counts as one, each directory it creates as one"
        );
    }

    #[test]
    fn the_unpack_limit_is_the_smaller_of_the_fetch_cap_and_the_download_size_bound() {
        const MIB: u64 = 1 << 20;
        let ten_min = Duration::from_secs(600);
        let limit = |cap, size| {
            let l = UnpackLimits::for_download(cap, size, ten_min);
            assert_eq!((l.max_entries, l.max_time), (MAX_ENTRIES, ten_min));
            (l.max_bytes, l.too_large().to_string())
        };
        // An 8 MiB download may not make the runner inflate 16 GiB (8 times a 2 GiB cap).
        assert_eq!(
            limit(2048 * MIB, 8 * MIB),
            (
                800 * MIB,
                "archive unpacks to more than 800MiB (100 times the size of the download, at \
                 least 256MiB)"
                    .to_owned()
            )
        );
        assert_eq!(limit(2048 * MIB, 1000).0, MIN_UNPACK_BYTES);
        assert_eq!(
            limit(2048 * MIB, 2048 * MIB),
            (
                16384 * MIB,
                "archive unpacks to more than 16GiB (8 times fetch.max_bytes)".to_owned()
            )
        );
        assert_eq!(limit(MIB, MIB).0, 8 * MIB);
    }

    #[test]
    fn zip_archives_unpack_and_a_dotdot_name_is_refused() {
        let zip = zip_bytes(&[
            ("t/", 0o755, b""),
            ("t/run", 0o755, b"#!/bin/sh\n"),
            ("t/doc.txt", 0o644, b"doc"),
        ]);
        let (tmp, r) = run(&zip, ToolFormat::Zip, UnpackMode::Tool, LIMITS);
        r.expect("zip unpacks");
        let dest = tmp.path().join("work/dest");
        assert_eq!(std::fs::read(dest.join("t/doc.txt")).unwrap(), b"doc");
        let mode = std::fs::metadata(dest.join("t/run"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o555);
        let zip = zip_bytes(&[("../evil", 0o644, b"x")]);
        let (tmp, r) = run(&zip, ToolFormat::Zip, UnpackMode::Tool, LIMITS);
        assert_eq!(
            r.expect_err("refused").to_string(),
            "archive entry \"../evil\": the path climbs out with \"..\""
        );
        assert_eq!(listing(&tmp.path().join("work")), ["dest"]);
    }

    /// A name given twice in a zip (the zip crate keeps the later one) is refused, as in a tar;
    /// and an entry count over the limit is refused before the directory is read into memory.
    #[test]
    fn a_zip_naming_an_entry_twice_or_listing_too_many_is_refused_before_its_directory_is_read() {
        let mut zip = zip_bytes(&[
            ("bin/toolA", 0o755, b"first-benign"),
            ("bin/toolB", 0o755, b"#!/bin/sh\necho SECOND\n"),
        ]);
        // Rename the second entry to the first's name, in its local header and its record.
        let (from, to) = (b"bin/toolB", b"bin/toolA");
        let mut i = 0;
        while let Some(at) = zip[i..].windows(from.len()).position(|w| w == from) {
            zip[i + at..i + at + to.len()].copy_from_slice(to);
            i += at + to.len();
        }
        let (tmp, r) = run(&zip, ToolFormat::Zip, UnpackMode::Tool, LIMITS);
        let err = r.expect_err("refused").to_string();
        assert!(
            err.contains("it lists 2 entries under 1 distinct names"),
            "{err}"
        );
        assert_eq!(listing(&tmp.path().join("work/dest")), Vec::<String>::new());
        // An end record claiming more entries than the limit: refused by count, before the
        // zip crate reads (and here would fail on) the directory.
        let zip = zip_bytes(&[("a", 0o644, b"a"), ("b", 0o644, b"b")]);
        let eocd = zip.len() - 22;
        assert_eq!(&zip[eocd..eocd + 4], b"PK\x05\x06");
        let mut many = zip.clone();
        many[eocd + 8..eocd + 10].copy_from_slice(&5000u16.to_le_bytes());
        many[eocd + 10..eocd + 12].copy_from_slice(&5000u16.to_le_bytes());
        let (_tmp, r) = run(&many, ToolFormat::Zip, UnpackMode::Tool, LIMITS);
        let err = r.expect_err("refused");
        assert!(
            matches!(err, ArchiveError::TooManyEntries(1000, _)),
            "{err}"
        );
        // The crate reads the count "on this disk" (offset 8): a total (offset 10) that says
        // less, to slip a count or a duplicate past the check, is refused.
        let mut split = zip.clone();
        split[eocd + 10..eocd + 12].copy_from_slice(&1u16.to_le_bytes());
        let (_tmp, r) = run(&split, ToolFormat::Zip, UnpackMode::Tool, LIMITS);
        let err = format!("{:#}", anyhow::Error::from(r.expect_err("refused")));
        assert!(err.contains("entry counts differ"), "{err}");
        // A second end record in the comment, its own comment ending before the end of the
        // file: readers taking the last signature, or the last whose comment fits (the zip
        // crate), would read it rather than the end record.
        let record = zip[eocd..].to_vec();
        let mut hidden = zip.clone();
        hidden[eocd + 20..eocd + 22].copy_from_slice(&(record.len() as u16 + 5).to_le_bytes());
        hidden.extend_from_slice(&record);
        hidden.extend_from_slice(b"after");
        let (_tmp, r) = run(&hidden, ToolFormat::Zip, UnpackMode::Tool, LIMITS);
        let err = r.expect_err("refused").to_string();
        assert!(
            err.contains(&format!(
                "an end of central directory record signature at offset {}, after the end \
                 record at offset {eocd}",
                eocd + 22
            )),
            "{err}"
        );
        // The same, the second record's comment ending at the end of the file: that one is
        // the end record (as readers choose), and the first lies between it and the directory.
        let mut nested = zip.clone();
        nested[eocd + 20..eocd + 22].copy_from_slice(&(record.len() as u16).to_le_bytes());
        nested.extend_from_slice(&record);
        let (_tmp, r) = run(&nested, ToolFormat::Zip, UnpackMode::Tool, LIMITS);
        let err = r.expect_err("refused").to_string();
        assert!(
            err.contains(&format!(
                "does not end at offset {}, where the end record is",
                eocd + 22
            )),
            "{err}"
        );
        // Shorter than an end record, starting like one: an error, not a panic.
        let (_tmp, r) = run(b"PK\x05\x06abc", ToolFormat::Zip, UnpackMode::Tool, LIMITS);
        let err = format!("{:#}", anyhow::Error::from(r.expect_err("refused")));
        assert!(err.contains("too short"), "{err}");
        // Not a zip at all.
        let (_tmp, r) = run(
            b"not a zip archive, only some text",
            ToolFormat::Zip,
            UnpackMode::Tool,
            LIMITS,
        );
        assert!(
            format!("{:#}", anyhow::Error::from(r.expect_err("refused")))
                .contains("no end of central directory record")
        );
    }

    /// Info-ZIP stores jars uncompressed: a jar near the end of a zip puts its end record in
    /// the zip's last 64 KiB, before the zip's own. The zip's end record is still the last
    /// one, and its directory the one walked and read: it unpacks, the jar intact.
    #[test]
    fn a_zip_with_a_stored_jar_near_its_end_unpacks() {
        let jar = zip_bytes(&[
            ("META-INF/MANIFEST.MF", 0o644, b"Manifest-Version: 1.0\n"),
            ("Tool.class", 0o644, b"\xca\xfe\xba\xbe"),
        ]);
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .unix_permissions(0o644);
        let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        w.start_file("bin/tool", stored.unix_permissions(0o755))
            .unwrap();
        w.write_all(b"#!/bin/sh\n").unwrap();
        w.start_file("lib/tool.jar", stored).unwrap();
        w.write_all(&jar).unwrap();
        let zip = w.finish().unwrap().into_inner();
        let ends = zip.windows(4).filter(|w| *w == b"PK\x05\x06").count();
        assert_eq!(ends, 2, "the jar's end record and the zip's");
        let (tmp, r) = run(&zip, ToolFormat::Zip, UnpackMode::Tool, LIMITS);
        r.expect("a zip holding a stored jar unpacks");
        let dest = tmp.path().join("work/dest");
        assert_eq!(std::fs::read(dest.join("lib/tool.jar")).unwrap(), jar);
        // The same from Info-ZIP's zip, an independent writer: the jar stored (-0), and zip64
        // end records (-fz), whose end record has its offset at the marker and its counts not.
        let src = TempDir::new("info-zip");
        std::fs::create_dir_all(src.path().join("lib")).unwrap();
        std::fs::create_dir_all(src.path().join("bin")).unwrap();
        std::fs::write(src.path().join("bin/tool"), b"#!/bin/sh\n").unwrap();
        std::fs::write(src.path().join("lib/tool.jar"), &jar).unwrap();
        let zipped = std::process::Command::new("zip")
            .args(["-q", "-r", "-0", "-fz", "out.zip", "bin", "lib"])
            .current_dir(src.path())
            .status();
        let Ok(status) = zipped else {
            eprintln!(
                "SKIP a_zip_with_a_stored_jar_near_its_end_unpacks (Info-ZIP): no zip binary"
            );
            return;
        };
        assert!(status.success(), "zip: {status}");
        let zip = std::fs::read(src.path().join("out.zip")).unwrap();
        assert!(
            zip.windows(4).any(|w| w == b"PK\x06\x06"),
            "zip64 end record"
        );
        let (tmp, r) = run(&zip, ToolFormat::Zip, UnpackMode::Tool, LIMITS);
        r.expect("Info-ZIP's zip unpacks");
        let dest = tmp.path().join("work/dest");
        assert_eq!(std::fs::read(dest.join("lib/tool.jar")).unwrap(), jar);
    }

    /// A block for each directory and symlink created, and a symlink's target: else a zip of
    /// 100 000 directories, or of symlinks with 4 KiB targets, wrote some 400 MB past the disk
    /// reserve, counted as nothing.
    #[test]
    fn directories_and_symlinks_are_charged_a_block_and_their_target_against_the_byte_limit() {
        let limits = UnpackLimits {
            max_bytes: 10 * NODE_CHARGE,
            ..LIMITS
        };
        let too_large = "archive unpacks to more than 40KiB (8 times fetch.max_bytes)";
        let dirs = |n: usize| (0..n).map(|i| format!("d{i}/")).collect::<Vec<_>>();
        // 3001 bytes, staying in the tree: 7097 bytes charged each, five fit in 40 KiB.
        let target = format!("{}f", "./".repeat(1500));
        let links = |n: usize| (0..n).map(|i| format!("l{i}")).collect::<Vec<_>>();
        let tar_of = |dirs: &[String], links: &[String]| {
            let mut entries: Vec<TarEntry> = dirs.iter().map(|d| dir(d)).collect();
            entries.extend(links.iter().map(|l| link(l, T::Symlink, &target)));
            tar_gz(&entries)
        };
        let zip_of = |dirs: &[String], links: &[String]| {
            let options = zip::write::SimpleFileOptions::default();
            let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
            for d in dirs {
                w.add_directory(d.as_str(), options).unwrap();
            }
            for l in links {
                w.add_symlink(l.as_str(), &target, options).unwrap();
            }
            w.finish().unwrap().into_inner()
        };
        for (format, bytes) in [
            (ToolFormat::TarGz, tar_of(&dirs(10), &[])),
            (ToolFormat::Zip, zip_of(&dirs(10), &[])),
        ] {
            let (_t, r) = run(&bytes, format, UnpackMode::Tool, limits);
            assert_eq!(r.expect("ten directories fit").bytes, 10 * NODE_CHARGE);
        }
        for (format, bytes) in [
            (ToolFormat::TarGz, tar_of(&dirs(11), &[])),
            (ToolFormat::Zip, zip_of(&dirs(11), &[])),
            (ToolFormat::TarGz, tar_of(&[], &links(6))),
            (ToolFormat::Zip, zip_of(&[], &links(6))),
        ] {
            let (tmp, r) = run(&bytes, format, UnpackMode::Tool, limits);
            assert_eq!(
                r.expect_err("too large").to_string(),
                too_large,
                "{format:?}"
            );
            let made = listing(&tmp.path().join("work/dest")).len();
            assert!(made <= 10, "{format:?}: {made} entries written");
        }
        for (format, bytes) in [
            (ToolFormat::TarGz, tar_of(&[], &links(5))),
            (ToolFormat::Zip, zip_of(&[], &links(5))),
        ] {
            let (_t, r) = run(&bytes, format, UnpackMode::Tool, limits);
            let charged = 5 * (NODE_CHARGE + target.len() as u64);
            assert_eq!(r.expect("five links fit").bytes, charged, "{format:?}");
        }
        // The directories an entry's path creates are charged too.
        let deep = tar_gz(&[file(&format!("{}f", "d/".repeat(11)), 0o644, b"")]);
        let (_t, r) = run(&deep, ToolFormat::TarGz, UnpackMode::Tool, limits);
        assert_eq!(r.expect_err("too large").to_string(), too_large);
    }

    #[test]
    fn tar_xz_archives_unpack() {
        let tar = crate::tools::testutil::tar_bytes(&[file("bin/tool", 0o755, b"xz tool")]);
        let xz = std::process::Command::new("xz")
            .args(["-c", "-z"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = xz else {
            eprintln!("SKIP tar_xz_archives_unpack: no xz binary to build the archive");
            return;
        };
        child.stdin.take().unwrap().write_all(&tar).unwrap();
        let out = child.wait_with_output().unwrap();
        let (tmp, r) = run(&out.stdout, ToolFormat::TarXz, UnpackMode::Tool, LIMITS);
        r.expect("xz unpacks");
        assert_eq!(
            std::fs::read(tmp.path().join("work/dest/bin/tool")).unwrap(),
            b"xz tool"
        );
    }

    #[test]
    fn a_single_file_is_placed_under_the_tool_name_executable() {
        let (tmp, r) = run(b"\x7fELF...", ToolFormat::File, UnpackMode::Tool, LIMITS);
        r.expect("file");
        let dest = tmp.path().join("work/dest");
        assert_eq!(listing(&dest), ["mytool"]);
        let mode = std::fs::metadata(dest.join("mytool"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o555);
    }
}
