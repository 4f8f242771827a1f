//! The decompressed tar stream, checked before the `tar` crate reads it.
//!
//! The crate reads each GNU long-name (`L`) and long-link (`K`) entry and each pax extended
//! header (`x`) whole into memory before it returns the entry they describe, whatever size
//! their header declares: a 1 MB .tar.gz holding a 1 GiB `L` entry took 5.3 GB. Nothing the
//! crate offers bounds that. So the stream passes through [`TarStream`], which follows the
//! archive's headers exactly as the crate does (the same header positions and sizes, including
//! the override of the next entry's size by a pax `size` record) and refuses, before the crate
//! reads a byte of its payload:
//!
//! - an `L`, `K`, `x` or `g` (pax global) entry larger than [`MAX_EXTENSION_BYTES`] (64 KiB;
//!   GNU tar and bsdtar write a few hundred bytes);
//! - a GNU sparse entry (`S`), refused anyway, whose extra headers the crate would read first.
//!
//! It also counts every payload byte against [`UnpackLimits::max_bytes`], not only the file
//! content that is written: the crate decompresses and discards the payload of entries
//! nobody reads (pax global headers, directories, links), and an 8 MB .tar.gz with an 8 GiB
//! pax global header otherwise unpacked "successfully". Headers and padding are not counted:
//! there are at most four headers per entry counted against `max_entries`. And it fails
//! every read once the unpack's deadline has passed.
//!
//! A header it cannot follow (a size that does not parse) stops the stream too: the crate
//! fails on the same header, and reading on could only mean the two disagree.
//!
//! Alternatives rejected: a first pass over the stream (decompresses twice, and must follow the
//! headers the same way anyway); `Entries::raw` with long names and pax records parsed here (a
//! second tar parser beside the crate, whose paths would then have to agree); patching the
//! crate (a fork to carry).

use std::io::{self, Read};
use std::time::Instant;

use bulwark_protocol::format_size;
use tar::{EntryType, Header};

use super::{refused, shown_part, ArchiveError, UnpackLimits};

/// Most bytes of one `L`, `K`, `x` or `g` entry.
pub(super) const MAX_EXTENSION_BYTES: u64 = 64 * 1024;
/// Bytes of an oversized GNU long name read to show it in the refusal.
const PREVIEW_BYTES: usize = 256;
const BLOCK: u64 = 512;

/// A reader of a decompressed tar stream for `tar::Archive`, which refuses what the crate
/// would read without bound. After a refusal every read fails; [`TarStream::refusal`] says
/// why, and should be reported instead of the crate's error.
#[derive(Debug)]
pub(super) struct TarStream<R> {
    inner: R,
    /// Offset in the stream of the next byte read.
    pos: u64,
    /// Where the next header starts; before it, the current entry's payload and padding.
    next_header: u64,
    /// Where the current entry's payload ends.
    payload_end: u64,
    header: [u8; BLOCK as usize],
    /// Bytes of the next header read so far.
    filled: usize,
    /// The current entry's payload, kept when it is a pax header (`x`): its `size` record
    /// changes where the next header is.
    pax: Option<Vec<u8>>,
    /// A pax `size` for the next entry that is not an extension header.
    pax_size: Option<u64>,
    /// An oversized GNU long name: its kind and size, and its first bytes, shown in the
    /// refusal once read.
    preview: Option<(&'static str, u64, Vec<u8>)>,
    /// The all-zero block that ends the archive was read: the crate reads nothing more.
    ended: bool,
    /// Payload bytes so far, against `limits.max_bytes`.
    payload_bytes: u64,
    limits: UnpackLimits,
    deadline: Instant,
    refusal: Option<ArchiveError>,
}

impl<R: Read> TarStream<R> {
    pub(super) fn new(inner: R, limits: UnpackLimits, deadline: Instant) -> TarStream<R> {
        TarStream {
            inner,
            pos: 0,
            next_header: 0,
            payload_end: 0,
            header: [0; BLOCK as usize],
            filled: 0,
            pax: None,
            pax_size: None,
            preview: None,
            ended: false,
            payload_bytes: 0,
            limits,
            deadline,
            refusal: None,
        }
    }

    /// Why the stream stopped, if it did: reported instead of the error the crate saw.
    pub(super) fn refusal(&mut self) -> Option<ArchiveError> {
        self.refusal.take()
    }

    /// Looks at `data`, the next bytes of the stream, as the crate will.
    fn inspect(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.refusal.is_none() {
            if self.ended {
                self.pos += data.len() as u64;
                return;
            }
            if self.pos < self.next_header {
                let n = (self.next_header - self.pos).min(data.len() as u64) as usize;
                let payload = (self.payload_end.saturating_sub(self.pos) as usize).min(n);
                self.payload(&data[..payload]);
                self.pos += n as u64;
                data = &data[n..];
                if self.pos >= self.payload_end {
                    self.payload_done();
                }
                continue;
            }
            let n = (BLOCK as usize - self.filled).min(data.len());
            self.header[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            self.pos += n as u64;
            data = &data[n..];
            if self.filled == BLOCK as usize {
                self.filled = 0;
                self.on_header();
            }
        }
    }

    fn payload(&mut self, bytes: &[u8]) {
        self.payload_bytes += bytes.len() as u64;
        if self.payload_bytes > self.limits.max_bytes {
            self.refusal = Some(self.limits.too_large());
            return;
        }
        if let Some(pax) = &mut self.pax {
            pax.extend_from_slice(bytes);
        }
        if let Some((what, size, head)) = &mut self.preview {
            let room = PREVIEW_BYTES - head.len();
            head.extend_from_slice(&bytes[..room.min(bytes.len())]);
            if head.len() == PREVIEW_BYTES {
                let (what, size) = (*what, *size);
                let mut name = std::mem::take(head);
                name.truncate(name.iter().position(|b| *b == 0).unwrap_or(name.len()));
                self.refuse_extension(&name, size, what, size);
            }
        }
    }

    /// The current entry's payload has been read: a pax header's `size` record now applies.
    fn payload_done(&mut self) {
        if let Some(pax) = self.pax.take() {
            self.pax_size = pax_size(&pax);
        }
    }

    /// A whole header has been read: where is the next one, and may the crate read this
    /// entry's payload?
    fn on_header(&mut self) {
        let start = self.pos - BLOCK;
        if self.header.iter().all(|b| *b == 0) {
            // The crate stops here (it does not skip zero blocks unless told to).
            self.ended = true;
            return;
        }
        let header = Header::from_byte_slice(&self.header);
        let kind = header.entry_type();
        let extension = kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions();
        // The crate reads `L`, `K` and `x` as describing the next entry only when the header
        // has the ustar or GNU magic; anything else it returns as an entry, which ends what
        // an `x` before it applies to.
        let recognized = header.as_gnu().is_some() || header.as_ustar().is_some();
        let describes_next = recognized && extension && !kind.is_pax_global_extensions();
        let Ok(declared) = header.entry_size() else {
            self.stop(start, "its size does not parse");
            return;
        };
        let size = match self.pax_size {
            Some(pax) if !extension => pax,
            _ => declared,
        };
        if !describes_next {
            self.pax_size = None;
        }
        let Some(next) = size
            .checked_add(BLOCK - 1)
            .map(|s| s & !(BLOCK - 1))
            .and_then(|s| self.pos.checked_add(s))
        else {
            self.stop(start, "its size overflows");
            return;
        };
        self.next_header = next;
        self.payload_end = self.pos + size;
        let name = header.path_bytes();
        if kind.is_gnu_sparse() {
            self.refusal = Some(refused(&name, "unsupported entry type GNUSparse"));
            return;
        }
        if extension && size > MAX_EXTENSION_BYTES {
            let what = match kind {
                EntryType::GNULongName => "GNU long name",
                EntryType::GNULongLink => "GNU long link target",
                EntryType::XHeader => "pax extended header",
                _ => "pax global header",
            };
            if kind.is_gnu_longname() {
                // Its payload is the name of the entry it describes: show the start of it.
                self.preview = Some((what, size, Vec::with_capacity(PREVIEW_BYTES)));
            } else {
                let name = name.into_owned();
                self.refuse_extension(&name, name.len() as u64, what, size);
            }
            return;
        }
        if recognized && kind.is_pax_local_extensions() {
            self.pax = Some(Vec::with_capacity(size as usize));
        }
        if size == 0 {
            self.payload_done();
        }
    }

    /// Refuses an oversized extension entry, named by `name`: the first bytes of a long name
    /// (`len` is then the declared length), else the header's own name.
    fn refuse_extension(&mut self, name: &[u8], len: u64, what: &'static str, size: u64) {
        self.refusal = Some(ArchiveError::Refused {
            entry: shown_part(name, len),
            reason: format!(
                "its {what} is {}, more than the {} allowed; the archive is malformed or hostile",
                format_size(size),
                format_size(MAX_EXTENSION_BYTES)
            ),
        });
    }

    fn stop(&mut self, start: u64, why: &str) {
        self.refusal = Some(ArchiveError::Read(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("tar header at offset {start}: {why}"),
        )));
    }
}

/// The `size` record of a pax header, read as the crate reads it: the first `size` key,
/// nothing when a record before it is malformed or its value is not a number.
fn pax_size(records: &[u8]) -> Option<u64> {
    for record in tar::PaxExtensions::new(records) {
        let record = record.ok()?;
        if record.key() == Ok("size") {
            return record.value().ok()?.parse().ok();
        }
    }
    None
}

impl<R: Read> Read for TarStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.refusal.is_some() {
            return Err(stopped());
        }
        if Instant::now() >= self.deadline {
            self.refusal = Some(ArchiveError::TimedOut(self.limits.max_time));
            return Err(stopped());
        }
        let want = match &self.preview {
            // Only as much of an oversized name as the refusal shows.
            Some((_, _, head)) => buf.len().min(PREVIEW_BYTES - head.len()),
            None => buf.len(),
        };
        let n = self.inner.read(&mut buf[..want])?;
        self.inspect(&buf[..n]);
        if n == 0 && want > 0 {
            if let Some((what, size, head)) = self.preview.take() {
                // Cut short: refuse with what there is.
                self.refuse_extension(&head, size, what, size);
            }
        }
        if self.refusal.is_some() {
            return Err(stopped());
        }
        Ok(n)
    }
}

fn stopped() -> io::Error {
    io::Error::other("the archive was refused")
}

#[cfg(test)]
mod tests {
    use super::super::{unpack_tar, Tree, UnpackLimits, UnpackMode};
    use super::*;
    use crate::tools::testutil::{extension, file, listing, tar_bytes, TempDir};
    use std::fs::File;
    use std::io::Cursor;
    use std::os::fd::OwnedFd;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::tests::LIMITS;

    /// A stream that fails once more than `budget` bytes were read from it, or after 10 s:
    /// an unbounded read of a huge entry then ends in an error after little memory and time,
    /// instead of after gigabytes or hours.
    struct Budget<R> {
        inner: R,
        read: Arc<AtomicU64>,
        budget: u64,
        until: Instant,
    }

    impl<R: Read> Read for Budget<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if Instant::now() >= self.until {
                return Err(io::Error::other("test stream: still read after 10s"));
            }
            let n = self.inner.read(buf)?;
            let total = self.read.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
            if total > self.budget {
                return Err(io::Error::other(format!(
                    "test stream: read past its budget of {} bytes",
                    self.budget
                )));
            }
            Ok(n)
        }
    }

    /// `head`, then `fill` bytes of `b'a'` generated as they are read, then `tail`.
    fn stream(head: Vec<u8>, fill: u64, tail: Vec<u8>, budget: u64) -> (impl Read, Arc<AtomicU64>) {
        let read = Arc::new(AtomicU64::new(0));
        let inner = Cursor::new(head)
            .chain(io::repeat(b'a').take(fill))
            .chain(Cursor::new(tail));
        (
            Budget {
                inner,
                read: read.clone(),
                budget,
                until: Instant::now() + Duration::from_secs(10),
            },
            read,
        )
    }

    /// Unpacks `source` into a fresh directory; returns it (to look at) and the result.
    fn unpack(source: impl Read, limits: UnpackLimits) -> (TempDir, Result<(), ArchiveError>) {
        let dir = TempDir::new("tar-stream");
        let root: OwnedFd = File::open(dir.path()).unwrap().into();
        let mut tree = Tree::new(root, UnpackMode::Tool, limits);
        let result = unpack_tar(source, &mut tree);
        (dir, result)
    }

    #[test]
    fn extension_entries_over_64_kib_are_refused_before_the_crate_reads_them() {
        // Each declares 1 TiB: read whole, as the crate does, that is 1 TiB of memory (the
        // review: 5.3 GB for 1 GiB). The stream allows 1 MiB, then fails the read.
        let size: u64 = 1 << 40;
        let a200 = "a".repeat(200);
        for (kind, entry, what) in [
            (
                EntryType::GNULongName,
                format!("\"{a200}\"… ({size} bytes)"),
                "GNU long name",
            ),
            (
                EntryType::GNULongLink,
                "\"././@LongLink\"".to_owned(),
                "GNU long link target",
            ),
            (
                EntryType::XHeader,
                "\"PaxHeaders/entry\"".to_owned(),
                "pax extended header",
            ),
            (
                EntryType::XGlobalHeader,
                "\"pax_global_header\"".to_owned(),
                "pax global header",
            ),
        ] {
            let head = extension(kind, size).as_bytes().to_vec();
            let (source, read) = stream(head, size, Vec::new(), 1 << 20);
            let (dir, result) = unpack(source, LIMITS);
            let err = result.expect_err("refused").to_string();
            assert_eq!(
                err,
                format!(
                    "archive entry {entry}: its {what} is 1TiB, more than the 64KiB allowed; \
                     the archive is malformed or hostile"
                ),
                "{kind:?}"
            );
            let read = read.load(Ordering::SeqCst);
            assert!(
                read <= 512 + PREVIEW_BYTES as u64,
                "{kind:?}: read {read} bytes"
            );
            assert!(listing(dir.path()).is_empty());
        }
    }

    #[test]
    fn a_pax_size_record_moves_the_next_header_as_the_crate_does() {
        // `x` says the next entry has 5 bytes though its header says 0: the crate reads 5,
        // and the stream must look for the next header where the crate does.
        let records = b"10 size=5\n".to_vec();
        let mut tar = extension(EntryType::XHeader, records.len() as u64)
            .as_bytes()
            .to_vec();
        tar.extend_from_slice(&records);
        tar.resize(1024, 0);
        let f = tar_bytes(&[file("f", 0o644, b"")]);
        tar.extend_from_slice(&f[..512]);
        tar.extend_from_slice(b"hello");
        tar.resize(2048, 0);
        let rest = tar_bytes(&[file("g", 0o644, b"abc")]);
        let (dir, result) = unpack(Cursor::new([&tar[..], &rest[..]].concat()), LIMITS);
        result.expect("unpacks");
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"hello");
        assert_eq!(std::fs::read(dir.path().join("g")).unwrap(), b"abc");
        // And an oversized header right after is seen where it is.
        let big = extension(EntryType::XGlobalHeader, 1 << 30);
        let (source, _) = stream(
            [&tar[..], big.as_bytes()].concat(),
            1 << 30,
            Vec::new(),
            1 << 20,
        );
        let (_dir, result) = unpack(source, LIMITS);
        let err = result.expect_err("refused").to_string();
        assert!(
            err.starts_with("archive entry \"pax_global_header\": its pax global header is 1GiB"),
            "{err}"
        );
    }

    /// A header of `kind` for `path` declaring `size` bytes of payload.
    fn header(path: &str, kind: EntryType, link: &str, size: u64) -> Vec<u8> {
        let mut h = Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
        h.as_gnu_mut().unwrap().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(0o755);
        h.set_size(size);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    /// `entries` as a tar stream without its end-of-archive blocks, to put more after.
    fn open_tar(entries: &[crate::tools::testutil::TarEntry]) -> Vec<u8> {
        let mut bytes = tar_bytes(entries);
        bytes.truncate(bytes.len() - 1024);
        bytes
    }

    #[test]
    fn payloads_nobody_reads_count_against_the_unpack_limit() {
        // Each declares 1 TiB the crate would decompress and discard (the review: 8 GiB of a
        // pax global header in 1.2 s, "successfully"). The limit is 1 MiB.
        let size: u64 = 1 << 40;
        for (kind, link) in [
            (EntryType::Directory, ""),
            (EntryType::Symlink, "f"),
            (EntryType::Link, "f"),
        ] {
            let mut head = open_tar(&[file("f", 0o644, b"x")]);
            head.extend(header("e", kind, link, size));
            let (source, read) = stream(head, size, Vec::new(), 4 << 20);
            let (_dir, result) = unpack(source, LIMITS);
            let err = result.expect_err("too large").to_string();
            assert_eq!(
                err, "archive unpacks to more than 1MiB (8 times fetch.max_bytes)",
                "{kind:?}"
            );
            let read = read.load(Ordering::SeqCst);
            assert!(read < 2 << 20, "{kind:?}: read {read} bytes");
        }
        // Pax global headers within their own limit still add up.
        let g = [
            extension(EntryType::XGlobalHeader, 60 << 10).as_bytes(),
            &[b'a'; 60 << 10][..],
        ]
        .concat();
        let (_dir, result) = unpack(Cursor::new(g.repeat(20)), LIMITS);
        assert!(
            matches!(result, Err(ArchiveError::TooLarge { limit, .. }) if limit == 1 << 20),
            "{result:?}"
        );
        // And each counts as an entry, though nothing is written for it.
        let limits = UnpackLimits {
            max_entries: 3,
            ..LIMITS
        };
        let empty = extension(EntryType::XGlobalHeader, 0);
        let (_dir, result) = unpack(Cursor::new(empty.as_bytes().repeat(5)), limits);
        assert_eq!(
            result.expect_err("too many").to_string(),
            "archive has more than 3 entries"
        );
    }

    #[test]
    fn unpacking_stops_at_its_deadline_with_a_clear_error() {
        // A directory whose 1 TiB payload would be decompressed for minutes; no byte limit.
        let size: u64 = 1 << 40;
        let limits = UnpackLimits {
            max_bytes: u64::MAX,
            max_time: Duration::from_millis(300),
            ..LIMITS
        };
        let (source, _) = stream(
            header("d", EntryType::Directory, "", size),
            size,
            Vec::new(),
            u64::MAX,
        );
        let started = Instant::now();
        let (_dir, result) = unpack(source, limits);
        assert_eq!(
            result.expect_err("timed out").to_string(),
            "unpacking took longer than 300ms (fetch.timeout); if the archive is genuine, \
             raise fetch.timeout"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        // Zip entries too.
        let zip = crate::tools::testutil::zip_bytes(&[("z", 0o644, b"zz")]);
        let dir = TempDir::new("zip-deadline");
        let root: OwnedFd = File::open(dir.path()).unwrap().into();
        let limits = UnpackLimits {
            max_time: Duration::ZERO,
            ..LIMITS
        };
        let mut tree = Tree::new(root, UnpackMode::Tool, limits);
        let blob = dir.path().join("blob");
        std::fs::write(&blob, zip).unwrap();
        let result = super::super::unpack_zip(File::open(&blob).unwrap(), &mut tree);
        assert!(
            matches!(result, Err(ArchiveError::TimedOut(d)) if d.is_zero()),
            "{result:?}"
        );
    }
}
