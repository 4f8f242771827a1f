//! A zip's end records and central directory, checked before the `zip` crate reads them.
//!
//! The crate reads every record of the central directory into memory (hundreds of bytes each)
//! before any entry can be looked at, so the entry limit is applied to a count read beforehand,
//! and a name given twice is found by comparing that count with the entries the crate kept
//! (it keys them by name). Both hold only if the crate then reads the very directory counted.
//! Its search is forgiving where ours must not be: when the directory behind the last end
//! record does not parse, it searches the whole file backwards for an earlier end record
//! (`ZipArchive::get_metadata`), and when a zip64 end record fails its length check it looks
//! for another one before the locator (`spec::find_central_directory`). An archive could then
//! show a one-entry directory to us and a 200 000-entry one to the crate: a ~2 GiB download
//! taking tens of GB in the runner, duplicates slipping through. So the crate's first
//! candidate is made one it cannot fail on structurally, and a failure it finds anyway cannot
//! lead it elsewhere:
//!
//! - the end record is the last signature whose comment ends exactly at the end of the file,
//!   as readers choose it; a signature after it (in its fields or its comment) is refused:
//!   readers that take the last signature (Python's `zipfile`), or the last whose comment fits
//!   in the file (Go's `archive/zip`, the `zip` crate), would read another directory. A
//!   signature earlier in the file (a stored jar near the end) is no concern: which directory
//!   is read is settled by the walk below, not by the tail holding one signature;
//! - both counts (this disk, total) agree, one disk only; the zip64 end record is used when
//!   its locator is there, and required when the directory's offset is at its zip64 marker
//!   (0xffffffff; without a locator a count of 0xffff or a size of 0xffffffff is taken as
//!   written, as the crate takes them); it must be where the locator points, with its signature, ending
//!   exactly at the locator (the crate's length check); a 32-bit field not at its marker must
//!   equal the zip64 value (the crate reads the 32-bit fields when the count and offset are
//!   not at their markers);
//! - the directory is walked with bounded reads: exactly the listed records, each its signature,
//!   46 bytes and its name, extra field and comment, from the offset the end record states to
//!   exactly the zip64 end record or the end record, of the stated size;
//! - no end record signature lies in the directory, the zip64 end record or the locator, and
//!   while the crate reads the directory it sees zeros before it ([`Fence`]). If the crate still
//!   fails on the directory (an extra field it refuses, say), its backward search then finds no
//!   earlier end record and it fails, rather than read another directory.
//!
//! A genuine archive passes all of this: one disk, the directory right before its end records,
//! no data between them. One whose directory holds the bytes `PK\x05\x06` in a name, a field or
//! a checksum is refused; in practice that is a crafted one.
//!
//! Alternatives rejected: mirroring every check the crate makes on a record (its extra-field
//! parsing too: a copy of its internals that would drift with each release; the fence makes a
//! missed one harmless instead); reading entries through a directory parsed here (the crate
//! has no public API for it); patching the crate (a fork to carry).

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::rc::Rc;
use std::time::Instant;

use super::{ArchiveError, UnpackLimits};

const EOCD_SIG: &[u8; 4] = b"PK\x05\x06";
const EOCD_LEN: usize = 22;
const LOCATOR_SIG: &[u8; 4] = b"PK\x06\x07";
const LOCATOR_LEN: usize = 20;
const ZIP64_SIG: &[u8; 4] = b"PK\x06\x06";
/// The zip64 end record's fixed part; its size field counts from after itself (44 more).
const ZIP64_LEN: usize = 56;
/// Most bytes of the zip64 end record's extensible data sector (writers leave it empty; the
/// crate reads it whole into memory).
const MAX_ZIP64_EXTENSIBLE: u64 = 64 * 1024;
const RECORD_SIG: &[u8; 4] = b"PK\x01\x02";
const RECORD_LEN: usize = 46;
/// How many records the walk reads between looks at the clock.
const RECORDS_PER_CLOCK_CHECK: u64 = 1024;

/// The central directory as the end records describe it, once checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Directory {
    /// Records it lists.
    pub(super) entries: u64,
    /// Its first byte, from the start of the file (it must sit where its end record says: a
    /// prefix is fine only when the offsets account for it, as `zip -A` makes them).
    pub(super) start: u64,
    /// Where it ends: at the zip64 end record, or at the end record.
    pub(super) end: u64,
}

fn layout(why: String) -> ArchiveError {
    ArchiveError::ZipLayout(why)
}

fn find_eocd_sig(bytes: &[u8]) -> Option<usize> {
    bytes.windows(EOCD_SIG.len()).position(|w| w == EOCD_SIG)
}

/// Refuses `bytes`, read at `offset` as `what`, if an end record signature starts in them.
fn no_eocd_sig(bytes: &[u8], offset: u64, what: &str) -> Result<(), ArchiveError> {
    match find_eocd_sig(bytes) {
        Some(i) => Err(layout(format!(
            "an end of central directory record signature at offset {} inside {what}: the zip \
             reader could fall back to it and read another directory",
            offset + i as u64
        ))),
        None => Ok(()),
    }
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from(u32_at(b, i)) | (u64::from(u32_at(b, i + 4)) << 32)
}

/// Reads and checks the end of central directory record and, when there is one, the zip64
/// end record, from the end of `file` (the last 64 KiB or so, and the zip64 record where the
/// locator points); see the module docs for what is refused.
pub(super) fn end_records(file: &mut File) -> Result<Directory, ArchiveError> {
    let len = file.seek(SeekFrom::End(0)).map_err(ArchiveError::Read)?;
    if len < EOCD_LEN as u64 {
        return Err(layout("too short to be a zip archive".into()));
    }
    let tail_len = len.min((LOCATOR_LEN + EOCD_LEN + usize::from(u16::MAX)) as u64);
    let base = len - tail_len;
    file.seek(SeekFrom::Start(base))
        .map_err(ArchiveError::Read)?;
    let mut tail = vec![0u8; tail_len as usize];
    file.read_exact(&mut tail).map_err(ArchiveError::Read)?;
    let at = (0..=tail.len() - EOCD_LEN)
        .rev()
        .find(|&i| {
            tail[i..].starts_with(EOCD_SIG)
                && i + EOCD_LEN + usize::from(u16_at(&tail, i + 20)) == tail.len()
        })
        .ok_or_else(|| {
            layout(
                "no end of central directory record whose comment ends at the end of the file"
                    .into(),
            )
        })?;
    let eocd_at = base + at as u64;
    if let Some(i) = find_eocd_sig(&tail[at + 1..]) {
        return Err(layout(format!(
            "an end of central directory record signature at offset {}, after the end record at \
             offset {eocd_at} (in its fields or its comment): readers taking the last signature \
             would read another directory",
            eocd_at + 1 + i as u64
        )));
    }
    let eocd = &tail[at..at + EOCD_LEN];
    let (disk, disk_of_dir) = (u16_at(eocd, 4), u16_at(eocd, 6));
    let (on_disk, total) = (u16_at(eocd, 8), u16_at(eocd, 10));
    let (size, offset) = (u32_at(eocd, 12), u32_at(eocd, 16));
    if on_disk != total {
        return Err(layout(
            "the end record's entry counts differ (this disk against the total)".into(),
        ));
    }
    let locator = at
        .checked_sub(LOCATOR_LEN)
        .map(|l| &tail[l..at])
        .filter(|l| l.starts_with(LOCATOR_SIG));
    let zip64 = locator.is_some();
    if disk != disk_of_dir || !(disk == 0 || (zip64 && disk == u16::MAX)) {
        return Err(layout(format!(
            "the end record says the archive spans several disks (this disk {disk}, the \
             directory's {disk_of_dir}); only single-disk archives are read"
        )));
    }
    let Some(locator) = locator else {
        // Without zip64 records the fields are taken as they are, as the crate takes them:
        // Info-ZIP and Python's zipfile write an archive of exactly 65535 entries as plain zip
        // with the count 0xFFFF. Only an offset at the marker cannot be one (it would lie past
        // where a zip32 archive's directory can start).
        if offset == u32::MAX {
            return Err(layout(
                "no zip64 end of central directory locator before the end record, though its \
                 directory offset is at its zip64 marker"
                    .into(),
            ));
        }
        return directory(
            u64::from(total),
            u64::from(offset),
            u64::from(size),
            eocd_at,
            "end record",
        );
    };
    let locator_at = eocd_at - LOCATOR_LEN as u64;
    no_eocd_sig(
        locator,
        locator_at,
        "the zip64 end of central directory locator",
    )?;
    let record_at = u64_at(locator, 8);
    if u32_at(locator, 4) != 0 || u32_at(locator, 16) > 1 {
        return Err(layout(
            "the zip64 locator says the archive spans several disks; only single-disk archives \
             are read"
                .into(),
        ));
    }
    if locator_at
        .checked_sub(record_at)
        .is_none_or(|room| room < ZIP64_LEN as u64)
    {
        return Err(layout(format!(
            "the zip64 locator at offset {locator_at} points at offset {record_at}, which leaves \
             no room for a zip64 end of central directory record before it"
        )));
    }
    let mut record = vec![0u8; ZIP64_LEN];
    file.seek(SeekFrom::Start(record_at))
        .map_err(ArchiveError::Read)?;
    file.read_exact(&mut record).map_err(ArchiveError::Read)?;
    if !record.starts_with(ZIP64_SIG) {
        return Err(layout(format!(
            "no zip64 end of central directory record at offset {record_at}, where the locator \
             points"
        )));
    }
    // The crate's length check: the record must end exactly at the locator, or it looks for
    // another record further on.
    let record_size = u64_at(&record, 4);
    let room = locator_at - record_at;
    if record_size < 44 || record_size.checked_add(12) != Some(room) {
        return Err(layout(format!(
            "the zip64 end record at offset {record_at} says it is {} bytes long, but the \
             locator follows it {room} bytes on: it must end at the locator",
            u128::from(record_size) + 12
        )));
    }
    let extensible = record_size - 44;
    if extensible > MAX_ZIP64_EXTENSIBLE {
        return Err(layout(format!(
            "the zip64 end record's extensible data is {extensible} bytes, more than the \
             {MAX_ZIP64_EXTENSIBLE} allowed"
        )));
    }
    record.resize(ZIP64_LEN + extensible as usize, 0);
    file.read_exact(&mut record[ZIP64_LEN..])
        .map_err(ArchiveError::Read)?;
    no_eocd_sig(
        &record,
        record_at,
        "the zip64 end of central directory record",
    )?;
    if u32_at(&record, 16) != 0 || u32_at(&record, 20) != 0 {
        return Err(layout(
            "the zip64 end record says the archive spans several disks; only single-disk \
             archives are read"
                .into(),
        ));
    }
    let (on_disk64, total64) = (u64_at(&record, 24), u64_at(&record, 32));
    let (size64, offset64) = (u64_at(&record, 40), u64_at(&record, 48));
    if on_disk64 != total64 {
        return Err(layout(
            "the zip64 record's entry counts differ (this disk against the total)".into(),
        ));
    }
    for (field, short, marker, long) in [
        (
            "entry count",
            u64::from(total),
            u64::from(u16::MAX),
            total64,
        ),
        (
            "directory size",
            u64::from(size),
            u64::from(u32::MAX),
            size64,
        ),
        (
            "directory offset",
            u64::from(offset),
            u64::from(u32::MAX),
            offset64,
        ),
    ] {
        if short != marker && short != long {
            return Err(layout(format!(
                "the end record's {field} ({short}) differs from the zip64 end record's ({long})"
            )));
        }
    }
    directory(total64, offset64, size64, record_at, "zip64 end record")
}

/// The directory of `entries` records, `size` bytes at `start`, which must end at `end`, where
/// the record named `what` is.
fn directory(
    entries: u64,
    start: u64,
    size: u64,
    end: u64,
    what: &str,
) -> Result<Directory, ArchiveError> {
    if start.checked_add(size) != Some(end) {
        return Err(layout(format!(
            "the central directory at offset {start}, {size} bytes, does not end at offset \
             {end}, where the {what} is (data in front of the archive, or between the directory \
             and its end records, is refused)"
        )));
    }
    Ok(Directory {
        entries,
        start,
        end,
    })
}

/// Walks the directory record by record, reading each one's 46 bytes and its name, extra field
/// and comment and never past `directory.end`: it must hold exactly `directory.entries` records
/// and end there, and hold no end record signature. Reads at most the directory's size, in one
/// buffer of at most 196 KiB.
pub(super) fn walk(
    file: &mut File,
    directory: &Directory,
    limits: UnpackLimits,
    deadline: Instant,
) -> Result<(), ArchiveError> {
    let Directory {
        entries,
        start,
        end,
    } = *directory;
    file.seek(SeekFrom::Start(start))
        .map_err(ArchiveError::Read)?;
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut pos = start;
    let mut record = Vec::new();
    for index in 1..=entries {
        if index % RECORDS_PER_CLOCK_CHECK == 0 && Instant::now() >= deadline {
            return Err(ArchiveError::TimedOut(limits.max_time));
        }
        let past = |len: usize| {
            layout(format!(
                "central directory record {index} of {entries} at offset {pos} ({len} bytes) runs \
                 past the end of the directory at offset {end}"
            ))
        };
        if end - pos < RECORD_LEN as u64 {
            return Err(past(RECORD_LEN));
        }
        record.resize(RECORD_LEN, 0);
        reader.read_exact(&mut record).map_err(ArchiveError::Read)?;
        if !record.starts_with(RECORD_SIG) {
            return Err(layout(format!(
                "central directory record {index} of {entries} at offset {pos} does not start \
                 with a record signature"
            )));
        }
        let len = RECORD_LEN
            + usize::from(u16_at(&record, 28))
            + usize::from(u16_at(&record, 30))
            + usize::from(u16_at(&record, 32));
        if end - pos < len as u64 {
            return Err(past(len));
        }
        record.resize(len, 0);
        reader
            .read_exact(&mut record[RECORD_LEN..])
            .map_err(ArchiveError::Read)?;
        no_eocd_sig(&record, pos, &format!("central directory record {index}"))?;
        pos += len as u64;
    }
    if pos != end {
        return Err(layout(format!(
            "the central directory's {entries} records end at offset {pos}, but its end records \
             put its end at offset {end} (bytes between them are refused)"
        )));
    }
    Ok(())
}

/// Hides what lies before the central directory while the zip crate reads the directory.
#[derive(Debug, Clone)]
pub(super) struct Fence(Rc<Cell<u64>>);

impl Fence {
    /// Shows the whole file again: for reading entries, once the directory is read.
    pub(super) fn lift(&self) {
        self.0.set(0);
    }
}

/// A reader that reads zeros for every byte before its [`Fence`]: the zip crate, reading the
/// directory, finds no end record before it to fall back to (see the module docs).
#[derive(Debug)]
pub(super) struct Fenced<R> {
    inner: R,
    pos: u64,
    fence: Fence,
}

impl<R: Read + Seek> Fenced<R> {
    /// `inner`, rewound, its bytes before `below` read as zeros until the fence is lifted.
    pub(super) fn new(mut inner: R, below: u64) -> io::Result<(Fenced<R>, Fence)> {
        let pos = inner.seek(SeekFrom::Start(0))?;
        let fence = Fence(Rc::new(Cell::new(below)));
        let fenced = Fenced {
            inner,
            pos,
            fence: fence.clone(),
        };
        Ok((fenced, fence))
    }
}

impl<R: Read> Read for Fenced<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let below = self.fence.0.get();
        if self.pos < below {
            let hidden = (below - self.pos).min(n as u64) as usize;
            buf[..hidden].fill(0);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Seek> Seek for Fenced<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = self.inner.seek(to)?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::LIMITS;
    use super::super::{unpack_zip, Tree, UnpackMode};
    use super::*;
    use crate::tools::testutil::{listing, TempDir};
    use std::io::Cursor;
    use std::os::fd::OwnedFd;

    /// The local header of a stored, empty file.
    fn local(name: &[u8]) -> Vec<u8> {
        let mut b = b"PK\x03\x04".to_vec();
        b.extend_from_slice(&20u16.to_le_bytes()); // version needed
        b.extend_from_slice(&[0; 4]); // flags, method (stored)
        b.extend_from_slice(&[0; 4]); // time, date
        b.extend_from_slice(&[0; 12]); // crc, sizes
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes()); // extra field length
        b.extend_from_slice(name);
        b
    }

    /// A central directory record of a stored, empty file whose local header is at `local_at`:
    /// `name_len` says how long its name is (`name.len()` for a genuine record).
    fn record(name: &[u8], name_len: u16, extra: &[u8], local_at: u32) -> Vec<u8> {
        let mut b = b"PK\x01\x02".to_vec();
        b.extend_from_slice(&(3u16 << 8 | 20).to_le_bytes()); // made by: unix
        b.extend_from_slice(&20u16.to_le_bytes()); // version needed
        b.extend_from_slice(&[0; 4]); // flags, method (stored)
        b.extend_from_slice(&[0; 4]); // time, date
        b.extend_from_slice(&[0; 12]); // crc, sizes
        b.extend_from_slice(&name_len.to_le_bytes());
        b.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        b.extend_from_slice(&[0; 6]); // comment length, disk, internal attributes
        b.extend_from_slice(&(0o100644u32 << 16).to_le_bytes());
        b.extend_from_slice(&local_at.to_le_bytes());
        b.extend_from_slice(name);
        b.extend_from_slice(extra);
        assert_eq!(b.len(), RECORD_LEN + name.len() + extra.len());
        b
    }

    fn eocd(entries: u16, size: u32, offset: u32, comment: &[u8]) -> Vec<u8> {
        let mut b = EOCD_SIG.to_vec();
        b.extend_from_slice(&[0; 4]); // disks
        b.extend_from_slice(&entries.to_le_bytes());
        b.extend_from_slice(&entries.to_le_bytes());
        b.extend_from_slice(&size.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&(comment.len() as u16).to_le_bytes());
        b.extend_from_slice(comment);
        b
    }

    fn zip64_record(record_size: u64, entries: u64, size: u64, offset: u64) -> Vec<u8> {
        let mut b = ZIP64_SIG.to_vec();
        b.extend_from_slice(&record_size.to_le_bytes());
        b.extend_from_slice(&45u16.to_le_bytes()); // made by
        b.extend_from_slice(&45u16.to_le_bytes()); // version needed
        b.extend_from_slice(&[0; 8]); // disks
        b.extend_from_slice(&entries.to_le_bytes());
        b.extend_from_slice(&entries.to_le_bytes());
        b.extend_from_slice(&size.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        b
    }

    fn locator(record_at: u64) -> Vec<u8> {
        let mut b = LOCATOR_SIG.to_vec();
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&record_at.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b
    }

    /// `n` empty files `f0`, `f1`…: their local headers, then their central directory. Returns
    /// the bytes and where the directory starts.
    fn files_and_directory(n: usize) -> (Vec<u8>, u64) {
        let mut bytes = Vec::new();
        let mut records = Vec::new();
        for i in 0..n {
            let name = format!("f{i}");
            records.extend(record(
                name.as_bytes(),
                name.len() as u16,
                b"",
                bytes.len() as u32,
            ));
            bytes.extend(local(name.as_bytes()));
        }
        let start = bytes.len() as u64;
        bytes.extend(records);
        (bytes, start)
    }

    /// A genuine zip64 archive of `n` empty files: the end record's fields at their markers.
    fn zip64_archive(n: usize) -> Vec<u8> {
        let (mut zip, start) = files_and_directory(n);
        let record_at = zip.len() as u64;
        zip.extend(zip64_record(44, n as u64, record_at - start, start));
        zip.extend(locator(record_at));
        zip.extend(eocd(u16::MAX, u32::MAX, u32::MAX, b""));
        zip
    }

    /// How many entries the zip crate reads from `zip` on its own (its length, or its error).
    fn crate_reads(zip: &[u8]) -> Result<usize, String> {
        zip::ZipArchive::new(Cursor::new(zip))
            .map(|a| a.len())
            .map_err(|e| e.to_string())
    }

    /// Checks `zip`'s end records and walks its directory, as `unpack_zip` does before the crate
    /// reads anything; returns the count, or the refusal.
    fn checked(zip: &[u8]) -> Result<u64, String> {
        let dir = TempDir::new("zip-directory");
        let blob = dir.path().join("blob");
        std::fs::write(&blob, zip).unwrap();
        let mut file = File::open(&blob).unwrap();
        let deadline = Instant::now() + LIMITS.max_time;
        end_records(&mut file)
            .and_then(|d| walk(&mut file, &d, LIMITS, deadline).map(|()| d.entries))
            .map_err(|e| e.to_string())
    }

    /// Unpacks `zip` with `unpack_zip` into a fresh directory; returns it and the result.
    fn unpack(zip: &[u8]) -> (TempDir, Result<(), ArchiveError>) {
        let dir = TempDir::new("zip-unpack");
        let blob = dir.path().join("blob");
        std::fs::write(&blob, zip).unwrap();
        std::fs::create_dir(dir.path().join("dest")).unwrap();
        let root: OwnedFd = File::open(dir.path().join("dest")).unwrap().into();
        let mut tree = Tree::new(root, UnpackMode::Tool, LIMITS);
        let result = unpack_zip(File::open(&blob).unwrap(), &mut tree);
        (dir, result)
    }

    #[test]
    fn genuine_zip64_archives_unpack() {
        let (dir, result) = unpack(&zip64_archive(3));
        result.expect("a hand-built zip64 archive unpacks");
        assert_eq!(listing(&dir.path().join("dest")), ["f0", "f1", "f2"]);
        // The zip crate's writer, with a zip64 comment: a zip64 end record with extensible
        // data, and an end record whose fields are not at their markers.
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        w.set_zip64_comment(Some("zip64 comment"));
        w.start_file("bin/tool", zip::write::SimpleFileOptions::default())
            .unwrap();
        io::Write::write_all(&mut w, b"tool").unwrap();
        let zip = w.finish().unwrap().into_inner();
        assert!(zip.windows(4).any(|w| w == ZIP64_SIG));
        let (dir, result) = unpack(&zip);
        result.expect("the crate's zip64 archive unpacks");
        assert_eq!(
            std::fs::read(dir.path().join("dest/bin/tool")).unwrap(),
            b"tool"
        );
    }

    #[test]
    fn a_plain_zip_of_exactly_65535_entries_is_read_as_written() {
        // Info-ZIP and Python's zipfile write 65535 entries as plain zip: the count at 0xFFFF,
        // no zip64 records. The crate takes the count as it is; so do the checks.
        let n = 65_535;
        let (mut zip, start) = files_and_directory(n);
        let size = u32::try_from(zip.len() as u64 - start).unwrap();
        zip.extend(eocd(u16::MAX, size, u32::try_from(start).unwrap(), b""));
        assert_eq!(crate_reads(&zip), Ok(n));
        let dir = TempDir::new("zip-65535");
        let blob = dir.path().join("blob");
        std::fs::write(&blob, &zip).unwrap();
        let mut file = File::open(&blob).unwrap();
        let limits = super::super::UnpackLimits {
            max_entries: 100_000,
            ..LIMITS
        };
        let d = end_records(&mut file).unwrap();
        assert_eq!(d.entries, n as u64);
        walk(&mut file, &d, limits, Instant::now() + LIMITS.max_time).unwrap();
        // An offset at its zip64 marker with no zip64 records cannot be a real directory.
        zip.truncate(zip.len() - 22);
        zip.extend(eocd(u16::MAX, size, u32::MAX, b""));
        assert!(checked(&zip)
            .unwrap_err()
            .contains("though its directory offset is at its zip64 marker"));
    }

    /// Review variant A: a zip64 archive of 2000 entries, zeros, then a decoy directory of one
    /// record whose name runs past the end of the file, and an end record saying 1 entry. The
    /// crate cannot read the decoy, searches backwards and reads the 2000; the tail alone said 1.
    #[test]
    fn a_decoy_directory_the_crate_would_fall_back_from_is_refused_before_it_reads_any() {
        let n = 2000;
        assert!(n as u64 > LIMITS.max_entries);
        let mut zip = zip64_archive(n);
        zip.extend(vec![0u8; 70_000]);
        let decoy_at = zip.len() as u32;
        let decoy = record(b"d", u16::MAX, b"", 0);
        zip.extend(&decoy);
        zip.extend(eocd(1, decoy.len() as u32, decoy_at, b""));
        assert_eq!(
            crate_reads(&zip),
            Ok(n),
            "the crate falls back to the earlier archive"
        );
        let expected = format!(
            "zip archive refused: central directory record 1 of 1 at offset {decoy_at} (65581 \
             bytes) runs past the end of the directory at offset {}; repack it with a standard zip tool, or ship a tar",
            decoy_at + 47
        );
        assert_eq!(checked(&zip), Err(expected.clone()));
        let (dir, result) = unpack(&zip);
        assert_eq!(result.expect_err("refused").to_string(), expected);
        assert!(listing(&dir.path().join("dest")).is_empty());
    }

    /// Review variant B: two zip64 end records before the locator. The one where the locator
    /// points says 1 entry but is 56 bytes long, not ending at the locator, so the crate skips
    /// it and reads the next, which says 2000 (and an offset 56 less: the crate takes the
    /// shift for data in front of the archive).
    #[test]
    fn a_zip64_end_record_not_ending_at_its_locator_is_refused_before_the_crate_reads_any() {
        let n = 2000;
        let (mut zip, start) = files_and_directory(n);
        let record_at = zip.len() as u64;
        let size = record_at - start;
        zip.extend(zip64_record(44, 1, size, start));
        zip.extend(zip64_record(44, n as u64, size, start - 56));
        zip.extend(locator(record_at));
        zip.extend(eocd(u16::MAX, u32::MAX, u32::MAX, b""));
        assert_eq!(
            crate_reads(&zip),
            Ok(n),
            "the crate skips to the second record"
        );
        let expected = format!(
            "zip archive refused: the zip64 end record at offset {record_at} says it is 56 bytes \
             long, but the locator follows it 112 bytes on: it must end at the locator; repack it with a standard zip tool, or ship a tar"
        );
        assert_eq!(checked(&zip), Err(expected.clone()));
        let (dir, result) = unpack(&zip);
        assert_eq!(result.expect_err("refused").to_string(), expected);
        assert!(listing(&dir.path().join("dest")).is_empty());
        // Where the locator points, no zip64 record at all: refused too.
        let mut moved = zip.clone();
        let at = moved.len() - EOCD_LEN - LOCATOR_LEN + 8;
        moved[at..at + 8].copy_from_slice(&(record_at - 8).to_le_bytes());
        assert!(checked(&moved)
            .unwrap_err()
            .contains("no zip64 end of central directory record at offset"));
    }

    /// A directory the walk accepts but the crate fails on (an extra field it refuses): the
    /// crate then searches backwards for an earlier end record, and here would find a planted
    /// 2000-entry archive. It sees zeros before the directory, so it finds none and fails.
    #[test]
    fn the_crate_failing_on_the_directory_cannot_fall_back_to_an_earlier_archive() {
        let n = 2000;
        let (mut zip, start) = files_and_directory(n);
        let size = zip.len() as u64 - start;
        zip.extend(eocd(n as u16, size as u32, start as u32, b""));
        let local_at = zip.len() as u32;
        zip.extend(local(b"x"));
        let start = zip.len() as u32;
        // An AES extra field of the wrong length: the crate refuses the record.
        let bad = record(b"x", 1, b"\x01\x99\x00\x00", local_at);
        zip.extend(&bad);
        zip.extend(eocd(1, bad.len() as u32, start, b""));
        assert_eq!(crate_reads(&zip), Ok(n), "unfenced, the crate falls back");
        assert_eq!(checked(&zip), Ok(1));
        let (dir, result) = unpack(&zip);
        // The crate's own error: having failed on the directory, it found no other.
        let err = result.expect_err("refused");
        assert!(matches!(err, ArchiveError::Zip(_)), "{err:?}");
        assert!(listing(&dir.path().join("dest")).is_empty());
    }

    #[test]
    fn an_end_record_signature_in_the_directory_or_after_the_end_record_is_refused() {
        // In a record's extra field.
        let (mut zip, _) = files_and_directory(0);
        let name = b"a";
        zip.extend(local(name));
        let start = zip.len() as u32;
        let hiding = record(
            name,
            1,
            &[b"\xca\xfe\x16\x00".as_slice(), &eocd(0, 0, 0, b"")].concat(),
            0,
        );
        zip.extend(&hiding);
        zip.extend(eocd(1, hiding.len() as u32, start, b""));
        assert_eq!(
            checked(&zip),
            Err(format!(
                "zip archive refused: an end of central directory record signature at offset {} \
                 inside central directory record 1: the zip reader could fall back to it and \
                 read another directory; repack it with a standard zip tool, or ship a tar",
                start as usize + RECORD_LEN + 1 + 4
            ))
        );
        // In the fields of the end record (a directory size of 0x06054b50).
        let mut zip = zip64_archive(1);
        let eocd_at = zip.len() - EOCD_LEN;
        zip[eocd_at + 12..eocd_at + 16].copy_from_slice(EOCD_SIG);
        assert!(checked(&zip).unwrap_err().contains(&format!(
            "signature at offset {}, after the end record",
            eocd_at + 12
        )));
    }
}
