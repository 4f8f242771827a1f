//! Copying a job's declared outputs out of its workspace.
//!
//! This runs only after every job process is gone (init has exited and the job's cgroup is
//! empty), so nothing can change a file between the hash and the copy: the bytes stored are
//! the bytes hashed, in one pass. The workspace is still the job's territory, so:
//! - the tree is walked through descriptors, never entering a symlinked directory, and only
//!   where a pattern can match: each directory is read one entry at a time and only what
//!   matches is kept (a job's million files beside its outputs cost the runner no memory),
//!   with the entries read and the matching work bounded ([`MAX_WALK_ENTRIES`],
//!   [`MAX_MATCH_STEPS`]);
//! - each output is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//!   RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)` relative to the workspace descriptor, so no
//!   path component can lead outside it;
//! - only regular files with one link are accepted: a symlink (to `/etc/shadow`, say), fifo,
//!   socket or device is refused by name, and so is a hard link, which could alias a file the
//!   job should not be able to name as its output;
//! - each file is written under a temporary name in the output directory and renamed, so an
//!   output directory never holds half a file;
//! - no output may take a runner's file name, nor share its path with another output, as a
//!   filesystem that folds names compares them (case, canonical equivalence, invisible
//!   characters, trailing dots; and vfat's short names for the runner's:
//!   `bulwark_protocol::v1::casefold`).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use bulwark_protocol::OutputRecord;
use nix::fcntl::{openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, fstatat, Mode};
use sha2::{Digest, Sha256};

use crate::fsutil::Kind;
use crate::glob::{Patterns, Reach};

/// Why outputs were refused.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// A matched path is not a single-link regular file.
    #[error("output {path}: refused: it is a {kind}, only regular files are accepted")]
    NotRegular {
        /// Relative path.
        path: String,
        /// What it is.
        kind: &'static str,
    },
    /// A matched file has more than one hard link.
    #[error("output {path}: refused: it has {links} hard links; outputs must be files with a single link")]
    HardLinked {
        /// Relative path.
        path: String,
        /// Link count.
        links: u64,
    },
    /// A declared pattern matched nothing.
    #[error("outputs.paths[{index}] \"{pattern}\" matched no file in /workspace")]
    NoMatch {
        /// Pattern index.
        index: usize,
        /// The pattern.
        pattern: String,
    },
    /// The output would overwrite one of the runner's own files (compared as a filesystem
    /// that folds names would: `bulwark_protocol::reserved_output`).
    #[error(
        "output {path}: refused: collides with the runner's own file {name}{}",
        folded_note(path, name)
    )]
    Reserved {
        /// Relative path.
        path: String,
        /// The runner's file.
        name: &'static str,
    },
    /// Two outputs would be one file where a filesystem folds names.
    #[error("output {path}: refused: its path differs from output {other}'s only in case, Unicode normalization, invisible characters or trailing dots, so the two would be one file {}; rename one in the job, narrow outputs.paths so that only one matches, or archive the tree in a step and declare the archive (trees such as the Linux kernel's hold such pairs)", bulwark_protocol::FOLDED_NAMES)]
    CaseCollision {
        /// Relative path.
        path: String,
        /// The other output's relative path (first in walk order).
        other: String,
    },
    /// Too many or too large outputs.
    #[error("outputs: {0}")]
    Bounds(String),
    /// A matching name is not UTF-8: it could not be recorded or opened faithfully.
    #[error(
        "output {path}: refused: its name is not UTF-8 (shown with U+FFFD); rename it in the job"
    )]
    NotUtf8 {
        /// The name with invalid bytes replaced.
        path: String,
    },
    /// A matching name holds a control character (a newline, an escape, a carriage return):
    /// written as is under the output directory, it would reach every tool and terminal that
    /// prints file names (`ls`, `find`, a `sha256sum` listing), as a line of its own or as
    /// terminal commands. The patterns themselves may not hold one either.
    #[error("output {path}: refused: its name holds a control character; rename it in the job")]
    ControlCharacter {
        /// The path as it is (`result.json` keeps it; a terminal is shown it escaped, as every
        /// reason).
        path: String,
    },
    /// I/O on a path.
    #[error("output {path}: {source}")]
    Io {
        /// Relative path.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// What [`OutputError::Reserved`] adds when the output is not spelled as the runner's file.
fn folded_note(path: &str, name: &str) -> String {
    if path.split('/').next() == Some(name) {
        String::new()
    } else {
        format!(" {}", bulwark_protocol::FOLDED_NAMES)
    }
}

/// Bounds on what a job may hand back.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Maximum number of output files.
    pub max_outputs: u64,
    /// Maximum total bytes.
    pub max_bytes: u64,
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Finds the workspace entries matching `patterns`, checks them, and copies them into `out`
/// (same relative paths), returning each with its size and sha256. On error nothing copied
/// so far is left in `out`.
pub fn collect(
    workspace: &Path,
    patterns: &[String],
    out: &Path,
    bounds: Bounds,
) -> Result<Vec<OutputRecord>, OutputError> {
    collect_within(workspace, patterns, out, bounds, |_| Ok(()))
}

/// [`collect`], with `room(total)` asked, once every output has been found and checked and
/// before anything is copied, whether `total` bytes may be written to `out` (the disk
/// reserve); its refusal is the error.
pub fn collect_within(
    workspace: &Path,
    patterns: &[String],
    out: &Path,
    bounds: Bounds,
    room: impl FnOnce(u64) -> Result<(), String>,
) -> Result<Vec<OutputRecord>, OutputError> {
    if patterns.is_empty() {
        // Nothing declared: the workspace is not even opened.
        return Ok(Vec::new());
    }
    let ws =
        nix::fcntl::open(workspace, DIR_FLAGS, Mode::empty()).map_err(|e| OutputError::Io {
            path: ".".into(),
            source: e.into(),
        })?;
    let matched = search(
        &ws,
        patterns,
        Search {
            max_outputs: bounds.max_outputs,
            max_entries: MAX_WALK_ENTRIES,
            max_steps: MAX_MATCH_STEPS,
        },
    )?;
    // Check everything before copying anything.
    let mut total = 0u64;
    let mut folded: std::collections::HashMap<String, &str> =
        std::collections::HashMap::with_capacity(matched.len());
    for (rel, kind, nlink, size) in &matched {
        if *kind != Kind::File {
            return Err(OutputError::NotRegular {
                path: rel.clone(),
                kind: kind.name(),
            });
        }
        if *nlink != 1 {
            return Err(OutputError::HardLinked {
                path: rel.clone(),
                links: *nlink,
            });
        }
        if let Some(name) = bulwark_protocol::reserved_output(rel) {
            return Err(OutputError::Reserved {
                path: rel.clone(),
                name,
            });
        }
        // Outputs travel: to a case-folding output directory, the coordinator, a download on
        // macOS or Windows. Two whose paths differ only in case (or in the invisible marks
        // ext4's casefold ignores) would be one file there.
        if let Some(other) = folded.insert(bulwark_protocol::case_folded(rel), rel) {
            return Err(OutputError::CaseCollision {
                path: rel.clone(),
                other: other.to_owned(),
            });
        }
        total = total.saturating_add(*size);
    }
    drop(folded);
    if matched.len() as u64 > bounds.max_outputs {
        return Err(OutputError::Bounds(format!(
            "{} files match, above limits.max_outputs = {}",
            matched.len(),
            bounds.max_outputs
        )));
    }
    if total > bounds.max_bytes {
        return Err(OutputError::Bounds(format!(
            "{total} bytes in total, above limits.max_output_bytes = {}",
            bounds.max_bytes
        )));
    }
    room(total).map_err(OutputError::Bounds)?;
    // Copy and hash in parallel across cores: each worker takes the next file. Results keep
    // the walk's (sorted) order. One file is copied on this thread (a large one still gets
    // its reader and writer threads in `copy_one`), and the core count, which costs a read
    // of the cgroup's CPU quota files, is asked only when there is more than one.
    let workers = if matched.len() > 1 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(matched.len())
    } else {
        1
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<Result<OutputRecord, OutputError>>>> = matched
        .iter()
        .map(|_| std::sync::Mutex::new(None))
        .collect();
    let work = || loop {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some((rel, ..)) = matched.get(i) else {
            break;
        };
        let r = copy_one(&ws, rel, out);
        if let Ok(mut slot) = slots[i].lock() {
            *slot = Some(r);
        }
    };
    if workers <= 1 {
        work();
    } else {
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(work);
            }
        });
    }
    let mut records = Vec::new();
    let mut first_err = None;
    for slot in slots {
        match slot.into_inner().ok().flatten() {
            Some(Ok(r)) => records.push(r),
            Some(Err(e)) => {
                first_err.get_or_insert(e);
            }
            None => {
                first_err.get_or_insert(OutputError::Bounds(
                    "an output copy did not complete".into(),
                ));
            }
        }
    }
    if let Some(e) = first_err {
        for r in &records {
            let _ = fs::remove_file(out.join(&r.path));
        }
        return Err(e);
    }
    Ok(records)
}

/// Deepest directory level searched for outputs; a job cannot make the runner recurse further.
/// Each level holds two descriptors while it is searched (its own, and its listing's).
const MAX_OUTPUT_DEPTH: usize = 128;

/// Most directory entries the search for outputs reads, in all the directories the patterns
/// reach: reading them costs time even though nothing of an entry that matches no pattern is
/// kept (a job can leave millions of files beside its outputs). A few seconds of reading (a
/// million entries took 0.6 s with their inodes cached), and more than a build's tree holds
/// where its outputs are searched for.
pub const MAX_WALK_ENTRIES: u64 = 1 << 22;

/// Most steps matching the patterns against the entries may take in all
/// (`glob::Patterns::step`: one per pattern and position for each entry, one per character
/// compared, one per word of reach cleared; and one per byte of the path of each directory
/// entered): seconds of work. A job chooses both the patterns and the names, and `*aaa…ab`
/// against `aaaa…` costs the product of their lengths for each entry.
pub const MAX_MATCH_STEPS: u64 = 1 << 32;

/// The bounds of a search for outputs.
#[derive(Debug, Clone, Copy)]
struct Search {
    /// `limits.max_outputs`.
    max_outputs: u64,
    /// [`MAX_WALK_ENTRIES`] (smaller in tests).
    max_entries: u64,
    /// [`MAX_MATCH_STEPS`] (smaller in tests).
    max_steps: u64,
}

/// The files under `ws` that `patterns` match, each with its kind, link count and size, in
/// the order a walk of each directory sorted by name finds them (the order `result.json` and
/// provenance list them in; readdir's own order is the filesystem's). Refused when a pattern
/// matches no file, or a bound of `search` is passed.
fn search(
    ws: &OwnedFd,
    patterns: &[String],
    bounds: Search,
) -> Result<Vec<(String, Kind, u64, u64)>, OutputError> {
    let compiled = Patterns::new(patterns);
    let mut walk = Walk {
        patterns: &compiled,
        found: Vec::new(),
        used: vec![false; patterns.len()],
        hits: vec![false; patterns.len()],
        entries: 0,
        steps: 0,
        bounds,
        name: Vec::new(),
        spare: Vec::new(),
    };
    walk.dir(ws, "", &compiled.start())?;
    if let Some(index) = walk.used.iter().position(|used| !used) {
        return Err(OutputError::NoMatch {
            index,
            pattern: patterns[index].clone(),
        });
    }
    let mut found = walk.found;
    found.sort_by(|a, b| a.0.split('/').cmp(b.0.split('/')));
    Ok(found)
}

/// The search for outputs: streams each directory the patterns reach (never lists one
/// whole), keeps only the entries that match, and counts what it reads and matches.
struct Walk<'a> {
    patterns: &'a Patterns,
    /// What matched and is not a directory: relative path, kind, links, size.
    found: Vec<(String, Kind, u64, u64)>,
    /// Which patterns matched something found.
    used: Vec<bool>,
    /// Which patterns matched the entry at hand.
    hits: Vec<bool>,
    /// Entries read, against [`MAX_WALK_ENTRIES`].
    entries: u64,
    /// Matching steps, against [`MAX_MATCH_STEPS`].
    steps: u64,
    bounds: Search,
    /// The entry's name as characters (reused).
    name: Vec<char>,
    /// Reach buffers of directories searched before, to reuse (one per level being searched).
    spare: Vec<Reach>,
}

impl Walk<'_> {
    /// Searches `dir` (at `rel`, with the patterns at `reach` there), one entry at a time,
    /// and each directory below it that a pattern can reach; stops as soon as more than
    /// `max_outputs` match or a bound is passed.
    fn dir(&mut self, dir: &OwnedFd, rel: &str, reach: &Reach) -> Result<(), OutputError> {
        if rel.matches('/').count() >= MAX_OUTPUT_DEPTH {
            return Err(OutputError::Bounds(format!(
                "{rel}: directories nested deeper than {MAX_OUTPUT_DEPTH} levels are not searched for outputs"
            )));
        }
        let io = |path: &str, e: nix::errno::Errno| OutputError::Io {
            path: if path.is_empty() {
                ".".into()
            } else {
                path.into()
            },
            source: e.into(),
        };
        // The listing reads through its own descriptor (`Dir` owns it); `dir` stays free
        // for the `*at` calls made while the listing is open.
        let listing_fd = openat(
            dir,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io(rel, e))?;
        let mut listing = nix::dir::Dir::from_fd(listing_fd).map_err(|e| io(rel, e))?;
        let mut next = self.spare.pop().unwrap_or_else(|| self.patterns.empty());
        for entry in listing.iter() {
            let entry = entry.map_err(|e| io(rel, e))?;
            let bytes = entry.file_name().to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            self.entries += 1;
            if self.entries > self.bounds.max_entries {
                return Err(OutputError::Bounds(format!(
                    "more than {} entries in the directories outputs.paths reach, the most the \
                     search for outputs reads; name the directory the outputs are in \
                     (dist/*.tar.gz rather than **/*.tar.gz), or remove what the build leaves \
                     beside them",
                    self.bounds.max_entries
                )));
            }
            let name = std::ffi::OsStr::from_bytes(bytes);
            let text = name.to_string_lossy();
            self.name.clear();
            self.name.extend(text.chars());
            let step = self.patterns.step(
                reach,
                &self.name,
                &mut next,
                &mut self.hits,
                &mut self.steps,
            );
            self.within_steps()?;
            if !step.matched && !step.descend {
                continue;
            }
            // The entry's path is built only for what is kept, entered or refused, never for
            // each entry a `**` could descend below: `rel` can be 32 KiB long.
            let child = || join(rel, &text);
            if name.to_str().is_none() {
                // Lossily converted, it could name a different file (its U+FFFD spelling),
                // and two names could become one record; a directory's name would do the
                // same to every path below it.
                return Err(OutputError::NotUtf8 { path: child() });
            }
            if text.chars().any(char::is_control) {
                return Err(OutputError::ControlCharacter { path: child() });
            }
            let mut is_dir = entry.file_type() == Some(nix::dir::Type::Directory);
            // Not every filesystem says in the listing what an entry is.
            if step.matched || entry.file_type().is_none() {
                let st = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|e| io(&child(), e))?;
                let kind = Kind::of(st.st_mode);
                is_dir = kind == Kind::Dir;
                if step.matched && !is_dir {
                    for (used, hit) in self.used.iter_mut().zip(&self.hits) {
                        *used |= *hit;
                    }
                    self.found.push((
                        child(),
                        kind,
                        st.st_nlink,
                        u64::try_from(st.st_size).unwrap_or(0),
                    ));
                    if self.found.len() as u64 > self.bounds.max_outputs {
                        let max = self.bounds.max_outputs;
                        return Err(OutputError::Bounds(format!(
                            "more than {max} files match, above limits.max_outputs = {max}"
                        )));
                    }
                }
            }
            if step.matched {
                self.hits.iter_mut().for_each(|h| *h = false);
            }
            if is_dir && step.descend {
                // Entering costs the directory's path (a step per byte), whatever is below.
                let child = child();
                self.steps += child.len() as u64;
                self.within_steps()?;
                let sub = openat(dir, name, DIR_FLAGS, Mode::empty()).map_err(|e| io(&child, e))?;
                self.dir(&sub, &child, &next)?;
            }
        }
        self.spare.push(next);
        Ok(())
    }

    /// Refuses the search once it has taken more than its bound of steps.
    fn within_steps(&self) -> Result<(), OutputError> {
        if self.steps > self.bounds.max_steps {
            return Err(OutputError::Bounds(format!(
                "matching outputs.paths against the workspace took more than {} steps, the \
                 most the search for outputs takes; use fewer patterns or fewer * in one \
                 component, or name the directories the outputs are in",
                self.bounds.max_steps
            )));
        }
        Ok(())
    }
}

/// The path of the entry `name` in the directory at `rel` (`""` at the top).
fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_owned()
    } else {
        format!("{rel}/{name}")
    }
}

fn copy_one(ws: &OwnedFd, rel: &str, out: &Path) -> Result<OutputRecord, OutputError> {
    let io_err = |source: io::Error| OutputError::Io {
        path: rel.to_string(),
        source,
    };
    let how = OpenHow::new()
        .flags(
            OFlag::O_RDONLY
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_CLOEXEC
                | OFlag::O_NOCTTY,
        )
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    let fd = openat2(ws, rel, how).map_err(|e| {
        if e == nix::errno::Errno::ELOOP {
            OutputError::NotRegular {
                path: rel.to_string(),
                kind: "symlink",
            }
        } else {
            io_err(e.into())
        }
    })?;
    // Re-check on the descriptor: the listing could be stale.
    let st = fstat(&fd).map_err(|e| io_err(e.into()))?;
    let kind = Kind::of(st.st_mode);
    if kind != Kind::File {
        return Err(OutputError::NotRegular {
            path: rel.to_string(),
            kind: kind.name(),
        });
    }
    if st.st_nlink != 1 {
        return Err(OutputError::HardLinked {
            path: rel.to_string(),
            links: st.st_nlink,
        });
    }
    let dest = out.join(rel);
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(io_err)?;
    }
    // Under a fresh, unguessable name: a fixed one (".<name>.bulwark-partial") could be
    // another declared output's own name, and the two would overwrite each other.
    let (tmp, dst) = crate::fsutil::create_beside(&dest, "bulwark-partial").map_err(io_err)?;
    let result = (|| -> io::Result<(u64, String)> {
        let src = File::from(fd);
        let (size, sha256) = if st.st_size > PIPELINE_THRESHOLD {
            copy_pipelined(src, dst)?
        } else {
            copy_simple(src, dst)?
        };
        // No fsync per output: integrity does not depend on it (a file lost in a crash fails
        // its digest check at verification), and it would double the cost of collecting
        // large outputs. result.json and the provenance files are fsynced.
        fs::rename(&tmp, &dest)?;
        Ok((size, sha256))
    })();
    match result {
        Ok((size, sha256)) => Ok(OutputRecord {
            path: rel.to_string(),
            size,
            sha256,
        }),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(io_err(e))
        }
    }
}

/// Files larger than this are copied by two threads: one reads and hashes, one writes.
const PIPELINE_THRESHOLD: i64 = 16 << 20;
const CHUNK: usize = 1 << 20;

fn read_full(src: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match src.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn copy_simple(mut src: File, mut dst: File) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = read_full(&mut src, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
        size += n as u64;
    }
    Ok((size, hex(&hasher.finalize())))
}

/// One pass over the source: this thread reads each chunk and hashes it, a second thread
/// writes it, with a few buffers in flight. The bytes written are exactly the bytes hashed.
fn copy_pipelined(mut src: File, mut dst: File) -> io::Result<(u64, String)> {
    use std::sync::mpsc;
    let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(4);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..4 {
        let _ = empty_tx.send(vec![0u8; CHUNK]);
    }
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> io::Result<()> {
            for (buf, n) in full_rx {
                dst.write_all(&buf[..n])?;
                if empty_tx.send(buf).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let read_result = (|| -> io::Result<()> {
            while let Ok(mut buf) = empty_rx.recv() {
                let n = read_full(&mut src, &mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                size += n as u64;
                if full_tx.send((buf, n)).is_err() {
                    break;
                }
            }
            Ok(())
        })();
        drop(full_tx);
        let write_result = writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("output writer thread panicked")));
        read_result?;
        write_result?;
        Ok((size, hex(&hasher.finalize())))
    })
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tempdir(tag: &str) -> crate::tools::testutil::TempDir {
        crate::tools::testutil::TempDir::named(&format!("bulwark-out-{tag}"))
    }

    const BOUNDS: Bounds = Bounds {
        max_outputs: 100,
        max_bytes: 1 << 30,
    };

    #[test]
    fn regular_files_are_copied_with_their_digest() {
        let ws = tempdir("ws");
        let out = tempdir("o");
        fs::create_dir(ws.join("dist")).unwrap();
        fs::write(ws.join("dist/a.txt"), "abc").unwrap();
        let recs = collect(&ws, &["dist/*.txt".into()], &out, BOUNDS).unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(
            recs[0].sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(fs::read_to_string(out.join("dist/a.txt")).unwrap(), "abc");
    }

    #[test]
    fn no_declared_outputs_leave_the_workspace_unread() {
        // Not even opened: a workspace that is not there is no error when nothing is asked.
        let out = tempdir("o");
        let missing = out.join("no-such-workspace");
        assert!(collect(&missing, &[], &out, BOUNDS).unwrap().is_empty());
        assert!(collect(&missing, &["a".into()], &out, BOUNDS).is_err());
    }

    #[test]
    fn many_outputs_are_copied_in_parallel_and_reported_in_walk_order() {
        let ws = tempdir("ws");
        let out = tempdir("o");
        for i in 0..40 {
            fs::write(ws.join(format!("f{i:02}")), format!("{i}")).unwrap();
        }
        let recs = collect(&ws, &["f*".into()], &out, BOUNDS).unwrap();
        let names: Vec<_> = recs.iter().map(|r| r.path.clone()).collect();
        let expected: Vec<_> = (0..40).map(|i| format!("f{i:02}")).collect();
        assert_eq!(names, expected);
        for (i, r) in recs.iter().enumerate() {
            let want = Sha256::digest(format!("{i}").as_bytes());
            assert_eq!(r.sha256, hex(&want), "{}", r.path);
            assert_eq!(
                fs::read_to_string(out.join(&r.path)).unwrap(),
                format!("{i}")
            );
        }
    }

    #[test]
    fn outputs_named_like_temporary_files_keep_their_own_bytes() {
        // A fixed temporary name (".a.bulwark-partial") let the output of that name and "a"
        // overwrite each other: the stored "a" had the other's bytes under "a"'s digest.
        let ws = tempdir("ws");
        let out = tempdir("o");
        let big = vec![b'A'; (PIPELINE_THRESHOLD + 1) as usize];
        fs::write(ws.join("a"), &big).unwrap();
        fs::write(ws.join(".a.bulwark-partial"), "BBBB").unwrap();
        fs::write(ws.join(".result.json.bulwark-tmp-1"), "CCCC").unwrap();
        // The longest names still have a temporary name that fits the 255-byte limit.
        fs::write(ws.join("n".repeat(255)), "DDDD").unwrap();
        let recs = collect(
            &ws,
            &[
                "a".into(),
                ".a.bulwark-partial".into(),
                ".result.json.bulwark-tmp-1".into(),
                "n".repeat(255),
            ],
            &out,
            BOUNDS,
        )
        .unwrap();
        assert_eq!(recs.len(), 4);
        for r in &recs {
            let stored = fs::read(out.join(&r.path)).unwrap();
            assert_eq!(stored, fs::read(ws.join(&r.path)).unwrap(), "{}", r.path);
            assert_eq!(r.sha256, hex(&Sha256::digest(&stored)), "{}", r.path);
        }
        // Only the outputs: no temporary file left beside them.
        assert_eq!(fs::read_dir(&out).unwrap().count(), 4);
    }

    #[test]
    fn an_output_name_with_a_control_character_is_refused() {
        let ws = tempdir("ws");
        let out = tempdir("o");
        fs::create_dir(ws.join("dist")).unwrap();
        for name in [
            "esc\u{1b}]0;PWNED\u{7}",
            "line\nbreak",
            "bs\rbulwark: job succeeded",
            "c1\u{9b}2J",
            "del\u{7f}",
            "tab\there",
        ] {
            fs::write(ws.join("dist").join(name), "x").unwrap();
            let e = collect(&ws, &["dist/**".into()], &out, BOUNDS).unwrap_err();
            assert!(
                matches!(&e, OutputError::ControlCharacter { path } if *path == format!("dist/{name}")),
                "{name:?}: {e:?}"
            );
            assert!(fs::read_dir(&out).unwrap().next().is_none());
            fs::remove_file(ws.join("dist").join(name)).unwrap();
        }
        // A directory on the way is refused alike; one matched by no pattern is not read.
        fs::create_dir(ws.join("dist/a\nb")).unwrap();
        fs::write(ws.join("dist/a\nb/f"), "x").unwrap();
        assert!(matches!(
            collect(&ws, &["dist/**".into()], &out, BOUNDS),
            Err(OutputError::ControlCharacter { .. })
        ));
        fs::write(ws.join("dist/ok.txt"), "x").unwrap();
        collect(&ws, &["dist/ok.txt".into()], &out, BOUNDS).unwrap();
    }

    #[test]
    fn an_output_name_that_is_not_utf8_is_refused() {
        use std::os::unix::ffi::OsStrExt;
        let ws = tempdir("ws");
        let out = tempdir("o");
        // "a\xff" and its lossy spelling "a\u{FFFD}" are two files.
        fs::write(ws.join(std::ffi::OsStr::from_bytes(b"a\xff")), "bad").unwrap();
        fs::write(ws.join("a\u{FFFD}"), "other").unwrap();
        let e = collect(&ws, &["a*".into()], &out, BOUNDS).unwrap_err();
        assert!(e.to_string().contains("its name is not UTF-8"), "{e}");
        assert!(fs::read_dir(&out).unwrap().next().is_none());
        // Even the pattern of its lossy spelling matches it: refused, not confused.
        assert!(collect(&ws, &["a\u{FFFD}".into()], &out, BOUNDS).is_err());
        // Matched by no pattern: ignored.
        fs::write(ws.join("b"), "ok").unwrap();
        collect(&ws, &["b".into()], &out, BOUNDS).unwrap();
    }

    #[test]
    fn symlink_output_is_refused_without_reading_its_target() {
        let ws = tempdir("ws");
        let out = tempdir("o");
        symlink("/etc/shadow", ws.join("leak")).unwrap();
        let e = collect(&ws, &["leak".into()], &out, BOUNDS).unwrap_err();
        assert!(
            e.to_string()
                .contains("output leak: refused: it is a symlink"),
            "{e}"
        );
        assert!(fs::read_dir(&out).unwrap().next().is_none());
    }

    #[test]
    fn symlinked_directory_is_not_entered() {
        let ws = tempdir("ws");
        let out = tempdir("o");
        let outside = tempdir("x");
        fs::write(outside.join("secret.txt"), "s").unwrap();
        symlink(&outside, ws.join("dist")).unwrap();
        let e = collect(&ws, &["dist/*.txt".into()], &out, BOUNDS).unwrap_err();
        assert!(matches!(e, OutputError::NoMatch { .. }), "{e}");
        let e = collect(&ws, &["dist/secret.txt".into()], &out, BOUNDS).unwrap_err();
        assert!(matches!(e, OutputError::NoMatch { .. }), "{e}");
        assert!(fs::read_dir(&out).unwrap().next().is_none());
    }

    #[test]
    fn hard_linked_output_is_refused() {
        let ws = tempdir("ws");
        let out = tempdir("o");
        fs::write(ws.join("a"), "x").unwrap();
        fs::hard_link(ws.join("a"), ws.join("b")).unwrap();
        let e = collect(&ws, &["b".into()], &out, BOUNDS).unwrap_err();
        assert!(
            e.to_string()
                .contains("output b: refused: it has 2 hard links"),
            "{e}"
        );
    }

    #[test]
    fn fifo_output_is_refused_without_blocking() {
        let ws = tempdir("ws");
        let out = tempdir("o");
        nix::unistd::mkfifo(&ws.join("f"), Mode::from_bits_truncate(0o644)).unwrap();
        let e = collect(&ws, &["f".into()], &out, BOUNDS).unwrap_err();
        assert!(e.to_string().contains("it is a fifo"), "{e}");
    }

    #[test]
    fn output_bounds_are_enforced() {
        let ws = tempdir("ws");
        let out = tempdir("o");
        for i in 0..3 {
            fs::write(ws.join(format!("f{i}")), "x").unwrap();
        }
        let e = collect(
            &ws,
            &["f*".into()],
            &out,
            Bounds {
                max_outputs: 2,
                max_bytes: 100,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("limits.max_outputs"), "{e}");
        // The walk stops at the bound: a matching file deeper than the first three is
        // never listed, so the error comes before a refusal it would otherwise cause.
        fs::create_dir(ws.join("g")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", ws.join("g/zz")).unwrap();
        let e = collect(
            &ws,
            &["f*".into(), "g/*".into()],
            &out,
            Bounds {
                max_outputs: 2,
                max_bytes: 100,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("more than 2 files match"), "{e}");
        fs::remove_dir_all(ws.join("g")).unwrap();
        let e = collect(
            &ws,
            &["f*".into()],
            &out,
            Bounds {
                max_outputs: 10,
                max_bytes: 2,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("limits.max_output_bytes"), "{e}");
    }

    #[test]
    fn the_search_reads_at_most_its_bound_of_entries_and_says_what_to_do() {
        // 40 files beside the one output: a bound of 20 entries read stops the search, with
        // the bound and the remedy named; the whole listing is never held to do it.
        let ws = tempdir("ws");
        for i in 0..40 {
            fs::write(ws.join(format!("junk{i:02}")), "").unwrap();
        }
        fs::create_dir(ws.join("dist")).unwrap();
        fs::write(ws.join("dist/app.tar.gz"), "x").unwrap();
        let fd = nix::fcntl::open(ws.path(), DIR_FLAGS, Mode::empty()).unwrap();
        let bounds = |max_entries| Search {
            max_outputs: 100,
            max_entries,
            max_steps: MAX_MATCH_STEPS,
        };
        let e = search(&fd, &["dist/*.tar.gz".into()], bounds(20)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "outputs: more than 20 entries in the directories outputs.paths reach, the most the \
             search for outputs reads; name the directory the outputs are in (dist/*.tar.gz \
             rather than **/*.tar.gz), or remove what the build leaves beside them"
        );
        // Every entry read counts, matched or not (41 in the top directory, 1 in dist).
        let found = search(&fd, &["dist/*.tar.gz".into()], bounds(42)).unwrap();
        assert_eq!(found.len(), 1);
        assert!(search(&fd, &["dist/*.tar.gz".into()], bounds(41)).is_err());
    }

    #[test]
    fn what_matching_costs_is_bounded_whatever_the_patterns_and_names() {
        // `*aaa…ab` against `aaa…`: the literal is compared again from each position of
        // each name, the product of the lengths.
        let ws = tempdir("ws");
        for i in 0..20 {
            fs::write(ws.join(format!("{}{i:02}", "a".repeat(200))), "").unwrap();
        }
        fs::write(ws.join("b"), "").unwrap();
        let fd = nix::fcntl::open(ws.path(), DIR_FLAGS, Mode::empty()).unwrap();
        let costly = format!("*{}b", "a".repeat(150));
        let patterns = vec![costly, "b".to_string()];
        let e = search(
            &fd,
            &patterns,
            Search {
                max_outputs: 100,
                max_entries: MAX_WALK_ENTRIES,
                max_steps: 100_000,
            },
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with(
                "outputs: matching outputs.paths against the workspace took more than 100000 \
                 steps, the most the search for outputs takes; use fewer patterns"
            ),
            "{e}"
        );
        // Under the real bound the same search ends, with what the patterns match.
        let e = search(
            &fd,
            &patterns,
            Search {
                max_outputs: 100,
                max_entries: MAX_WALK_ENTRIES,
                max_steps: MAX_MATCH_STEPS,
            },
        )
        .unwrap_err();
        assert!(matches!(e, OutputError::NoMatch { index: 0, .. }), "{e}");
    }

    #[test]
    fn a_path_is_built_only_for_what_is_kept_or_entered_and_entering_is_counted() {
        // 16 directories of 200-byte names: a path of 3 KiB below them. Under `**` each of
        // 500 files there could descend (were it a directory), but only what matches or is
        // entered costs its path.
        let ws = tempdir("ws");
        let deep: String = (0..16)
            .map(|_| "d".repeat(200))
            .collect::<Vec<_>>()
            .join("/");
        let bottom = ws.join(&deep);
        fs::create_dir_all(&bottom).unwrap();
        for i in 0..500 {
            fs::write(bottom.join(format!("f{i}.txt")), "").unwrap();
        }
        fs::write(bottom.join("lib.so"), "").unwrap();
        let fd = nix::fcntl::open(ws.path(), DIR_FLAGS, Mode::empty()).unwrap();
        let patterns = vec!["**/*.so".to_string()];
        let bounds = Search {
            max_outputs: 100,
            max_entries: MAX_WALK_ENTRIES,
            max_steps: 200_000,
        };
        let found = search(&fd, &patterns, bounds).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, format!("{deep}/lib.so"));
        // 100 directories entered there cost 3 KiB each: more than the bound.
        for i in 0..100 {
            fs::create_dir(bottom.join(format!("sub{i}"))).unwrap();
        }
        let e = search(&fd, &patterns, bounds).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("outputs: matching outputs.paths against the workspace took more"),
            "{e}"
        );
    }

    #[test]
    fn outputs_found_in_any_directory_order_are_listed_as_a_sorted_walk_lists_them() {
        // `a/b` before `a-c`: component by component, as a walk of sorted listings finds
        // them (a plain sort of the paths puts `-` before `/`). Created in reverse so that
        // no filesystem's listing order is the answer by chance.
        let ws = tempdir("ws");
        let out = tempdir("o");
        fs::write(ws.join("a-c"), "2").unwrap();
        fs::create_dir(ws.join("a")).unwrap();
        fs::write(ws.join("a/b"), "1").unwrap();
        fs::write(ws.join("0"), "0").unwrap();
        let recs = collect(&ws, &["**".into()], &out, BOUNDS).unwrap();
        let names: Vec<_> = recs.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(names, ["0", "a/b", "a-c"]);
    }

    #[test]
    fn a_match_named_like_a_runner_file_in_another_case_is_refused() {
        let ws = tempdir("ws");
        let out = tempdir("o");
        fs::write(ws.join("JOB.LOG"), "forged").unwrap();
        fs::write(ws.join("build.log"), "ok").unwrap();
        let e = collect(&ws, &["*.LOG".into(), "*.log".into()], &out, BOUNDS).unwrap_err();
        assert_eq!(
            e.to_string(),
            "output JOB.LOG: refused: collides with the runner's own file job.log where a \
             filesystem folds names (case, Unicode normalization, invisible characters, trailing \
             dots, 8.3 short names: a case-folding ext4 directory, vfat, NTFS, macOS)"
        );
        assert!(fs::read_dir(&out).unwrap().next().is_none());
        // Its own spelling is named as before.
        fs::write(ws.join("job.log"), "forged").unwrap();
        let e = collect(&ws, &["job.log".into()], &out, BOUNDS).unwrap_err();
        assert_eq!(
            e.to_string(),
            "output job.log: refused: collides with the runner's own file job.log"
        );
    }

    #[test]
    fn a_match_that_is_a_runner_file_with_invisible_marks_or_by_its_short_name_is_refused() {
        // ext4's and f2fs's casefold ignore default-ignorable code points; vfat and NTFS
        // match a long name's 8.3 alias. A glob matches each of these, which validation
        // cannot see.
        for (name, runner_file) in [
            ("job\u{200B}.log", "job.log"),
            ("result\u{FE0F}.json", "result.json"),
            (".job\u{2060}.log.partial", ".job.log.partial"),
            ("\u{200E}egress.log", "egress.log"),
            ("RESULT~1.JSO", "result.json"),
            ("JOBLOG~1.PAR", ".job.log.partial"),
        ] {
            let ws = tempdir("ws");
            let out = tempdir("o");
            fs::write(ws.join(name), "forged").unwrap();
            fs::write(ws.join("build.txt"), "ok").unwrap();
            let e = collect(&ws, &["*".into()], &out, BOUNDS).unwrap_err();
            assert!(
                matches!(&e, OutputError::Reserved { path, name: n } if path == name && *n == runner_file),
                "{name}: {e}"
            );
            assert!(fs::read_dir(&out).unwrap().next().is_none());
        }
    }

    #[test]
    fn outputs_whose_paths_differ_only_in_invisible_marks_or_by_case_folding_are_refused() {
        for (first, second) in [
            ("dist/app\u{200C}.tar.gz", "dist/app.tar.gz"),
            ("dist/\u{FEFF}x", "dist/x"),
            // Case folding, not lowercasing: final and medial sigma, the curled beta.
            ("dist/\u{03C2}.txt", "dist/\u{03C3}.txt"),
            ("dist/\u{03D0}", "dist/\u{03B2}"),
            // Canonical equivalence: precomposed against decomposed, also in another case.
            ("dist/caf\u{E9}.txt", "dist/cafe\u{301}.txt"),
            ("dist/CAF\u{C9}.txt", "dist/cafe\u{301}.txt"),
        ] {
            let ws = tempdir("ws");
            let out = tempdir("o");
            fs::create_dir(ws.join("dist")).unwrap();
            fs::write(ws.join(first), "one").unwrap();
            fs::write(ws.join(second), "two").unwrap();
            let e = collect(&ws, &["dist/*".into()], &out, BOUNDS).unwrap_err();
            assert!(
                matches!(&e, OutputError::CaseCollision { path, other }
                    if [path.as_str(), other.as_str()].contains(&first)
                        && [path.as_str(), other.as_str()].contains(&second)),
                "{first} {second}: {e}"
            );
            assert!(fs::read_dir(&out).unwrap().next().is_none());
        }
    }

    #[test]
    fn outputs_whose_paths_differ_only_in_case_are_refused_naming_both() {
        // On a case-folding output directory (or a download on macOS) the second would
        // replace the first under the first's digest.
        let ws = tempdir("ws");
        let out = tempdir("o");
        fs::create_dir(ws.join("dist")).unwrap();
        fs::write(ws.join("dist/App.tar.gz"), "one").unwrap();
        fs::write(ws.join("dist/app.tar.gz"), "two").unwrap();
        let e = collect(&ws, &["dist/*".into()], &out, BOUNDS).unwrap_err();
        assert_eq!(
            e.to_string(),
            "output dist/app.tar.gz: refused: its path differs from output dist/App.tar.gz's \
             only in case, Unicode normalization, invisible characters or trailing dots, so the \
             two would be one file where a filesystem folds names (case, Unicode normalization, \
             invisible characters, trailing dots, 8.3 short names: a case-folding ext4 \
             directory, vfat, NTFS, macOS); rename one in the \
             job, narrow outputs.paths so that only one matches, or archive the tree in a step \
             and declare the archive (trees such as the Linux kernel's hold such pairs)"
        );
        assert!(fs::read_dir(&out).unwrap().next().is_none());
        // Distinct names in one directory are no collision.
        fs::remove_file(ws.join("dist/app.tar.gz")).unwrap();
        fs::write(ws.join("dist/app.tar.xz"), "two").unwrap();
        assert_eq!(
            collect(&ws, &["dist/*".into()], &out, BOUNDS)
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn a_very_deep_tree_is_refused_not_recursed() {
        let ws = tempdir("ws");
        let out = tempdir("o");
        // Relative creation: the absolute path may exceed PATH_MAX.
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd {} && for i in $(seq {}); do mkdir d && cd d; done",
                ws.display(),
                MAX_OUTPUT_DEPTH + 2
            ))
            .status()
            .unwrap();
        let e = collect(&ws, &["**/x".into()], &out, BOUNDS).unwrap_err();
        assert!(e.to_string().contains("nested deeper than"), "{e}");
        crate::fsutil::remove_tree(&ws).unwrap();
        assert!(!ws.exists());
    }
}
