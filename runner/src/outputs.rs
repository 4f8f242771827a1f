//! Copying a job's declared outputs out of its workspace.
//!
//! This runs only after every job process is gone (init has exited and the job's cgroup is
//! empty), so nothing can change a file between the hash and the copy: the bytes stored are
//! the bytes hashed, in one pass. The workspace is still the job's territory, so:
//! - the tree is walked through descriptors, never entering a symlinked directory;
//! - each output is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//!   RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)` relative to the workspace descriptor, so no
//!   path component can lead outside it;
//! - only regular files with one link are accepted: a symlink (to `/etc/shadow`, say), fifo,
//!   socket or device is refused by name, and so is a hard link, which could alias a file the
//!   job should not be able to name as its output;
//! - each file is written under a temporary name in the output directory and renamed, so an
//!   output directory never holds half a file.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use bulwark_protocol::{OutputRecord, RESERVED_OUTPUT_NAMES};
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, Mode};
use sha2::{Digest, Sha256};

use crate::fsutil::{read_entries, Kind};

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
    /// The output would overwrite one of the runner's own files.
    #[error("output {path}: refused: collides with the runner's own file of that name")]
    Reserved {
        /// Relative path.
        path: String,
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
    let mut matched: Vec<(String, Kind, u64, u64)> = Vec::new();
    walk(&ws, "", patterns, &mut matched, bounds.max_outputs)?;
    for (i, p) in patterns.iter().enumerate() {
        if !matched.iter().any(|(rel, ..)| crate::glob::matches(p, rel)) {
            return Err(OutputError::NoMatch {
                index: i,
                pattern: p.clone(),
            });
        }
    }
    // Check everything before copying anything.
    let mut total = 0u64;
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
        let first = rel.split('/').next().unwrap_or_default();
        if RESERVED_OUTPUT_NAMES.contains(&first) {
            return Err(OutputError::Reserved { path: rel.clone() });
        }
        total = total.saturating_add(*size);
    }
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
const MAX_OUTPUT_DEPTH: usize = 128;

/// Collects the entries matching `patterns` under `dir`; stops as soon as more than `max`
/// match (a job with a million files must not make the runner list them all first).
fn walk(
    dir: &OwnedFd,
    rel: &str,
    patterns: &[String],
    out: &mut Vec<(String, Kind, u64, u64)>,
    max: u64,
) -> Result<(), OutputError> {
    if rel.matches('/').count() >= MAX_OUTPUT_DEPTH {
        return Err(OutputError::Bounds(format!(
            "{rel}: directories nested deeper than {MAX_OUTPUT_DEPTH} levels are not searched for outputs"
        )));
    }
    let entries = read_entries(dir).map_err(|e| OutputError::Io {
        path: if rel.is_empty() {
            ".".into()
        } else {
            rel.into()
        },
        source: e,
    })?;
    for e in entries {
        let name = e.name.to_string_lossy();
        let child = if rel.is_empty() {
            name.into_owned()
        } else {
            format!("{rel}/{name}")
        };
        if e.name.to_str().is_none() {
            // Lossily converted, it could name a different file (its U+FFFD spelling), and two
            // names could become one record; a directory's name would do the same to every
            // path below it.
            let matched = patterns
                .iter()
                .any(|p| crate::glob::matches(p, &child) || crate::glob::may_descend(p, &child));
            if matched {
                return Err(OutputError::NotUtf8 { path: child });
            }
            continue;
        }
        if patterns.iter().any(|p| crate::glob::matches(p, &child)) && e.kind != Kind::Dir {
            out.push((child.clone(), e.kind, e.nlink, e.size));
            if out.len() as u64 > max {
                return Err(OutputError::Bounds(format!(
                    "more than {max} files match, above limits.max_outputs = {max}"
                )));
            }
        }
        if e.kind == Kind::Dir && patterns.iter().any(|p| crate::glob::may_descend(p, &child)) {
            let sub = openat(dir, e.name.as_os_str(), DIR_FLAGS, Mode::empty()).map_err(|err| {
                OutputError::Io {
                    path: child.clone(),
                    source: err.into(),
                }
            })?;
            walk(&sub, &child, patterns, out, max)?;
        }
    }
    Ok(())
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
