//! Room on the state directory's filesystem, held for each cache save while it copies, so
//! that saves running at once never take it below `limits.min_free_disk` together.
//!
//! A save may write up to `caches.max_size` (and `caches.max_entries`). Measured alone, from
//! the free space at its own start, each of several saves running at once (one per job slot,
//! each in its own `bulwark run` process) would see the whole room above the reserve, and
//! together they could write that many times over it; the disk reserve's check would then stop
//! every running job on the host. So each save, under the store lock (`.store.lock`, held
//! for moments), measures the filesystem, subtracts what every other save in progress holds,
//! and holds what it may write: the configured bounds, or what is left when that is less. A
//! save that needs more than it holds stops as a save over its bounds does (not saved, the
//! reason says other saves held room), and the job still succeeds.
//!
//! What a save holds is a file in `.reservations/` under the store's root, holding its bytes
//! and entries, locked (`flock`, exclusive) by the save for as long as it lives and removed
//! when it ends, on an error or a panic too ([`Reservation`]'s `Drop`). The lock is what
//! makes it cross-process: saves come from separate `bulwark run` processes, and a process
//! that dies (killed, or a crash) lets go of its lock with it, so the next save finds that
//! file unlocked, removes it and counts nothing for it. Files are made and read only under
//! the store lock, so none is ever seen before its owner holds it.
//!
//! Alternatives rejected: an in-process registry (saves come from separate processes); a
//! process id in each file (reused ids, and pid namespaces, make a dead owner look alive or a
//! live one dead); taking turns, one save at a time per store (a 4 GB save would hold up a
//! small one for minutes, and make a job slot wait at the end of every job).
//!
//! Limits: a save's tree, once written, is counted twice until the save ends (in the space
//! the filesystem reports, and in what the save holds): conservative, for the length of a
//! save. Restores into jobs write on the job directory's filesystem, which the job's own
//! disk check watches; they hold nothing here.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bulwark_protocol::DiskReserve;
use nix::fcntl::{Flock, FlockArg};

use super::evict::StoreLock;
use super::tighter;
use crate::disk_reserve::{CheckError, Reserve, Room, Space};

/// Where reservations are kept, in the store's root.
pub(super) const RESERVATIONS: &str = ".reservations";

/// How a store measures its filesystem: [`crate::disk_reserve::space_at`], or a fixed
/// answer in tests.
pub(super) type Measure = fn(&Path, DiskReserve) -> Result<Space, CheckError>;

/// Room held by one save in progress; given back when dropped.
#[derive(Debug)]
pub(super) struct Reservation {
    path: PathBuf,
    _held: Flock<File>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // Unlinked before the lock goes: nobody counts it afterwards. Should the unlink fail,
        // the file stays, unlocked once this process lets go, and the next save removes it.
        if let Err(e) = fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), "giving back a cache save's room: {e}");
        }
    }
}

/// What a save may write, and what other saves held when that was reckoned.
#[derive(Debug)]
pub(super) struct Granted {
    /// The bound of the save's copy.
    pub room: Room,
    /// Bytes other saves in progress held (to say so when the save does not fit).
    pub others: u64,
    /// The room held, given back when this is dropped; `None` with the reserve off (nothing
    /// to keep).
    pub _held: Option<Reservation>,
}

/// Holds room for one save into the store at `root` (which exists): `configured` (the
/// per-cache bounds), or less when less is left above `setting` on the filesystem once what
/// other saves in progress hold is taken off. An error when the filesystem is already below
/// the reserve, or cannot be measured (fails closed).
pub(super) fn reserve(
    root: &Path,
    configured: Room,
    setting: DiskReserve,
    measure: Measure,
) -> Result<Granted, String> {
    let Some(reserve) = Reserve::new(root, setting) else {
        return Ok(Granted {
            room: configured,
            others: 0,
            _held: None,
        });
    };
    let refuse = |e: CheckError| format!("{e}; free space there, or lower limits.min_free_disk");
    let _store = StoreLock::take(root)?;
    let space = measure(root, setting).map_err(refuse)?;
    reserve.judge(&space, 0).map_err(refuse)?;
    let dir = root.join(RESERVATIONS);
    let others = held(&dir)?;
    let free = space.room();
    let left = Room {
        bytes: free.bytes.map(|b| b.saturating_sub(others.bytes)),
        entries: free.entries.map(|n| n.saturating_sub(others.entries)),
    };
    let room = tighter(configured, left);
    let reservation = take(&dir, room).map_err(|e| {
        format!(
            "holding room for the save in {}: {e}; check that directory",
            dir.display()
        )
    })?;
    Ok(Granted {
        room,
        others: others.bytes,
        _held: Some(reservation),
    })
}

/// Bytes and entries, added up.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Held {
    pub bytes: u64,
    pub entries: u64,
}

/// What the saves in progress hold in `dir` (under the store lock); removes what saves that
/// died left. A file that cannot be judged (unreadable, not lockable, not a reservation)
/// is an error naming it (fails closed: no save until it is seen to), never counted as a
/// figure the next save's refusal would quote.
pub(super) fn held(dir: &Path) -> Result<Held, String> {
    let mut sum = Held::default();
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(sum);
    };
    let unjudged = |path: &Path, why: String| {
        format!(
            "{}: cannot tell what room a cache save in progress holds ({why}); cache saves are \
             refused until it is removed (remove it if no `bulwark run` is saving a cache; \
             the store must be on a local filesystem with flock)",
            path.display()
        )
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(unjudged(&path, e.to_string())),
        };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            // Nobody holds it: its save is over (its process died before it removed it).
            Ok(_dead) => {
                let _ = fs::remove_file(&path);
            }
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let (bytes, entries) = read(&mut file)
                    .ok_or_else(|| unjudged(&path, "not `<bytes> <entries>`".into()))?;
                sum.bytes = sum.bytes.saturating_add(bytes);
                sum.entries = sum.entries.saturating_add(entries);
            }
            Err((_, e)) => return Err(unjudged(&path, format!("flock: {e}"))),
        }
    }
    Ok(sum)
}

/// A reservation's contents: `<bytes> <entries>\n`, `-` for no bound (counted as all).
fn read(file: &mut File) -> Option<(u64, u64)> {
    let mut text = String::new();
    file.take(64).read_to_string(&mut text).ok()?;
    let mut fields = text.split_whitespace().map(|f| match f {
        "-" => Some(u64::MAX),
        n => n.parse().ok(),
    });
    Some((fields.next()??, fields.next()??))
}

/// Makes and locks this save's reservation of `room` in `dir` (under the store lock).
fn take(dir: &Path, room: Room) -> io::Result<Reservation> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let path = dir.join(crate::fsutil::random_hex(8));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&path)?;
    let mut held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, e)) => {
            let _ = fs::remove_file(&path);
            return Err(e.into());
        }
    };
    let field = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let written = writeln!(held, "{} {}", field(room.bytes), field(room.entries));
    let reservation = Reservation { path, _held: held };
    // Dropped on failure: removed again.
    written.map(|()| reservation)
}
