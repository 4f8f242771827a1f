//! The output store: the bytes of every job's outputs, kept by the coordinator.
//!
//! # Why the coordinator keeps them
//!
//! A build host runs untrusted pull-request jobs beside trusted release builds, and keeps a
//! job's outputs only for `[daemon] keep_outputs`. An artifact fetched from the host that built
//! it is only as good as that host's state at the moment of the fetch, and a fleet's release
//! process should not need a route to every build host. So the daemon uploads every output
//! before it reports the result, and the coordinator refuses a result whose outputs it has
//! not received: a `finished` job's artifacts are at the control plane, next to its provenance.
//!
//! # What is checked on arrival
//!
//! An upload is a signed runner request (`PUT /v1/jobs/{id}/blobs/{sha256}`) whose signature
//! covers the sha256 named in its path as the body's hash (docs/control-plane.md). The
//! coordinator checks the signature and the lease before it reads a byte, then hashes the body
//! while it writes it to a temporary file, and renames the file into place only when the bytes
//! hash to that sha256 and their count to the declared `Content-Length`. So a stored blob is
//! exactly what the lease holder signed; the digest is the one in `result.json` and in the
//! provenance's subjects, which `bulwark verify` checks again before deployment.
//!
//! # Layout
//!
//! ```text
//! STATE/outputs/                0700
//!   job-<32 hex>/               0700, made at the job's first upload
//!     <sha256 hex>              0600  one file per distinct content
//!     .upload-<16 hex>          being received (removed at the next `serve` if left over)
//!     live.log                  0600  job.log so far, while the job runs (below)
//! ```
//!
//! Content-addressed per job: two outputs with the same bytes are one file, a retried upload
//! of a stored blob is answered at once, and nothing is ever overwritten. When the result is
//! recorded, every blob it does not list is removed, and `serve` removes everything of a job
//! whose lease ran out without a result (`api::serve`), so a runner cannot park data there.
//!
//! # The live log
//!
//! While a job runs, its daemon appends what the job has written to `job.log` so far
//! (`PUT /v1/jobs/{id}/live-log/{offset}`, signed, at most every `[daemon] live_log_interval`), so
//! an operator can watch a long build instead of waiting for its end. It is what the runner
//! stored, after masking, so it holds nothing the final log would not. Each append names the
//! offset it starts at: a retry whose first answer was lost overlaps what is stored and only
//! its new tail is kept; a gap is refused. It is not evidence: when the result is recorded it
//! is removed, and the `job.log` the result lists (a blob, under its sha256) is the log. At
//! most [`MAX_LIVE_LOG_BYTES`]; past that the daemon stops sending and the final log still
//! arrives with the result.
//!
//! # Limits
//!
//! At most [`OutputLimits::max_job_bytes`] per job (stored and in flight together, reserved
//! before any byte is read), and never leaving less than [`OutputLimits::min_free_bytes`]
//! free on the file system (the database lives there too). Stored outputs are kept until the
//! operator removes them; the coordinator has no retention of its own yet.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha256};

/// The directory under the state directory that holds the outputs.
pub const OUTPUTS_DIR: &str = "outputs";

/// Prefix of a blob being received.
const UPLOAD_PREFIX: &str = ".upload-";

/// The name of a running job's live log in its directory (not a sha256, so never a blob).
const LIVE_LOG: &str = "live.log";

/// The most a job's live log holds. A runner's own `limits.log_cap` (16 MiB by default) is
/// usually lower; past this the log arrives only with the result.
pub const MAX_LIVE_LOG_BYTES: u64 = 64 << 20;

/// How much the store accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// Most bytes of outputs per job, each file counted in whole [`BLOCK`]s (at least one):
    /// what it takes on disk, so many tiny files cannot use more than the limit says.
    pub max_job_bytes: u64,
    /// Most files (distinct contents) per job: each takes an inode.
    pub max_job_files: u64,
    /// Free bytes an upload must leave on the store's file system.
    pub min_free_bytes: u64,
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits {
            max_job_bytes: 4 << 30,
            max_job_files: 16_384,
            min_free_bytes: 1 << 30,
        }
    }
}

/// The unit a file is counted in against [`OutputLimits::max_job_bytes`].
pub const BLOCK: u64 = 4096;

/// What a file of `len` bytes counts for: whole blocks, at least one.
fn charge(len: u64) -> u64 {
    len.max(1).div_ceil(BLOCK).saturating_mul(BLOCK)
}

/// What the store refused, or what went wrong in it.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// Not a job id the coordinator makes (`job-` and 32 lowercase hex).
    #[error("job id {0:?} is not a job id")]
    JobId(String),
    /// Not 64 lowercase hex.
    #[error("{0:?} is not a sha256 (64 lowercase hex)")]
    Sha256(String),
    /// The upload would take the job over its limit.
    #[error("job {job_id}: {incoming} more bytes of outputs would exceed the coordinator's limit of {limit} bytes per job ({held} stored or being received; each file counts as whole {BLOCK}-byte blocks)")]
    TooLarge {
        /// The job.
        job_id: String,
        /// Bytes declared by this upload.
        incoming: u64,
        /// Bytes stored and reserved already.
        held: u64,
        /// The limit.
        limit: u64,
    },
    /// The same blob is being received on another connection (a retry whose first attempt
    /// is still being read).
    #[error("job {job_id}: output {sha} is being received on another connection; send it again once that ends (a retry while the first attempt is still being read)")]
    Receiving {
        /// The job.
        job_id: String,
        /// The blob.
        sha: String,
    },
    /// The upload would take the job over its number of files.
    #[error("job {job_id}: one more file of outputs would exceed the coordinator's limit of {limit} files per job")]
    TooManyFiles {
        /// The job.
        job_id: String,
        /// The limit.
        limit: u64,
    },
    /// The file system would be left with less than the minimum free.
    #[error("the coordinator's output store has {free} bytes free; storing {incoming} more would leave less than the {min_free} it keeps free")]
    DiskFull {
        /// Free bytes now.
        free: u64,
        /// Bytes declared by this upload.
        incoming: u64,
        /// The minimum kept free.
        min_free: u64,
    },
    /// The body was not as long as declared.
    #[error("body is {got} bytes, not the {declared} its Content-Length declared")]
    Length {
        /// Declared.
        declared: u64,
        /// Received (counting stops once past the declaration).
        got: u64,
    },
    /// The body does not hash to the digest in the path (and the signature).
    #[error("body does not hash to sha256 {expected} (it hashes to {actual}); nothing was stored")]
    Digest {
        /// The digest named and signed.
        expected: String,
        /// The body's.
        actual: String,
    },
    /// A live-log append starts past the end of what is stored.
    #[error("job {job_id}: the live log has {have} bytes; an append at offset {offset} would leave a gap")]
    LiveLogGap {
        /// The job.
        job_id: String,
        /// Bytes stored.
        have: u64,
        /// Where the append started.
        offset: u64,
    },
    /// A live-log append would take it past [`MAX_LIVE_LOG_BYTES`].
    #[error("job {job_id}: the live log would grow past {MAX_LIVE_LOG_BYTES} bytes; the rest arrives with the result")]
    LiveLogFull {
        /// The job.
        job_id: String,
    },
    /// The file system refused.
    #[error("output store: {what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl OutputError {
    /// Whether the file system ran out of space (an answer of its own: 507).
    pub fn is_storage_full(&self) -> bool {
        match self {
            OutputError::DiskFull { .. } => true,
            OutputError::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
            _ => false,
        }
    }
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> OutputError + 'a {
    move |source| OutputError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Checks a job id before it becomes a directory name.
pub fn check_job_id(id: &str) -> Result<(), OutputError> {
    match id.strip_prefix("job-") {
        Some(hex) if hex.len() == 32 && is_lower_hex(hex) => Ok(()),
        _ => Err(OutputError::JobId(id.to_owned())),
    }
}

/// Checks a sha256 before it becomes a file name.
pub fn check_sha256(sha: &str) -> Result<(), OutputError> {
    if sha.len() == 64 && is_lower_hex(sha) {
        Ok(())
    } else {
        Err(OutputError::Sha256(sha.to_owned()))
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The output store of one coordinator.
#[derive(Debug)]
pub struct OutputStore {
    root: PathBuf,
    limits: OutputLimits,
    /// Uploads in flight, per job.
    reserved: Arc<Mutex<HashMap<String, Held>>>,
    /// The blobs being received, as (job id, sha256): one at a time each.
    receiving: Arc<Mutex<HashSet<(String, String)>>>,
}

impl OutputStore {
    /// Opens (making it if need be) the store under the state directory `state_dir`. `serve`
    /// then calls [`OutputStore::remove_partial_uploads`]; the operator's commands, which may
    /// run beside a serving coordinator, do not.
    pub fn open(state_dir: &Path, limits: OutputLimits) -> Result<OutputStore, OutputError> {
        let root = state_dir.join(OUTPUTS_DIR);
        match fs::DirBuilder::new().mode(0o700).create(&root) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("creating", &root)(e)),
        }
        let meta = fs::symlink_metadata(&root).map_err(io("inspecting", &root))?;
        if !meta.is_dir() {
            return Err(io("inspecting", &root)(std::io::Error::other(
                "is not a directory",
            )));
        }
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700))
            .map_err(io("making private", &root))?;
        Ok(OutputStore {
            root,
            limits,
            reserved: Arc::default(),
            receiving: Arc::default(),
        })
    }

    /// The limits.
    pub fn limits(&self) -> OutputLimits {
        self.limits
    }

    fn job_dir(&self, job_id: &str) -> Result<PathBuf, OutputError> {
        check_job_id(job_id)?;
        Ok(self.root.join(job_id))
    }

    fn blob_path(&self, job_id: &str, sha: &str) -> Result<PathBuf, OutputError> {
        check_sha256(sha)?;
        Ok(self.job_dir(job_id)?.join(sha))
    }

    /// Removes the uploads a stopped coordinator left half-received. Only for a coordinator
    /// about to serve: it would also remove uploads another one is receiving.
    pub fn remove_partial_uploads(&self) -> Result<(), OutputError> {
        for job in fs::read_dir(&self.root).map_err(io("reading", &self.root))? {
            let job = job.map_err(io("reading", &self.root))?.path();
            let Ok(entries) = fs::read_dir(&job) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(UPLOAD_PREFIX))
                {
                    let path = entry.path();
                    fs::remove_file(&path).map_err(io("removing the partial upload", &path))?;
                    tracing::info!(path = %path.display(), "partial upload removed");
                }
            }
        }
        Ok(())
    }

    /// Whether job `job_id` has a stored blob `sha`.
    pub fn contains(&self, job_id: &str, sha: &str) -> Result<bool, OutputError> {
        Ok(self.stored_len(job_id, sha)?.is_some())
    }

    /// The size of the stored blob `sha` of `job_id`, or `None` when it is not stored.
    pub fn stored_len(&self, job_id: &str, sha: &str) -> Result<Option<u64>, OutputError> {
        let path = self.blob_path(job_id, sha)?;
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(Some(meta.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("inspecting", &path)(e)),
        }
    }

    /// The stored blobs of `job_id`: sha256 and size.
    fn stored(&self, job_id: &str) -> Result<Vec<(String, u64)>, OutputError> {
        let dir = self.job_dir(job_id)?;
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("reading", &dir)(e)),
        };
        let mut blobs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io("reading", &dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if check_sha256(&name).is_err() {
                continue;
            }
            let meta = entry.metadata().map_err(io("inspecting", &entry.path()))?;
            if meta.is_file() {
                blobs.push((name, meta.len()));
            }
        }
        Ok(blobs)
    }

    /// Reserves room for `len` more bytes of `job_id`'s outputs, or says why there is none.
    /// The reservation lasts until the returned value is dropped.
    pub fn reserve(&self, job_id: &str, len: u64) -> Result<Reservation, OutputError> {
        check_job_id(job_id)?;
        // Checked and taken under one lock: two uploads of one job cannot both pass.
        let mut reserved = self.reserved.lock().unwrap_or_else(PoisonError::into_inner);
        let stored = self.stored(job_id)?;
        let flying = reserved.get(job_id).copied().unwrap_or_default();
        let files = (stored.len() as u64).saturating_add(flying.files);
        if files >= self.limits.max_job_files {
            return Err(OutputError::TooManyFiles {
                job_id: job_id.to_owned(),
                limit: self.limits.max_job_files,
            });
        }
        let cost = charge(len);
        let held = stored
            .iter()
            .map(|(_, n)| charge(*n))
            .fold(flying.bytes, u64::saturating_add);
        if held.saturating_add(cost) > self.limits.max_job_bytes {
            return Err(OutputError::TooLarge {
                job_id: job_id.to_owned(),
                incoming: len,
                held,
                limit: self.limits.max_job_bytes,
            });
        }
        let in_flight: u64 = reserved.values().map(|h| h.bytes).sum();
        self.check_free(len.saturating_add(in_flight))?;
        let entry = reserved.entry(job_id.to_owned()).or_default();
        entry.bytes = entry.bytes.saturating_add(cost);
        entry.files += 1;
        Ok(Reservation {
            reserved: Arc::clone(&self.reserved),
            job_id: job_id.to_owned(),
            len,
            cost,
        })
    }

    /// Refuses when writing `len` more bytes would leave less than the minimum free.
    fn check_free(&self, len: u64) -> Result<(), OutputError> {
        let vfs = nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| io("measuring free space on", &self.root)(e.into()))?;
        #[allow(clippy::useless_conversion)] // u32 or u64 depending on the target
        let free = u64::from(vfs.blocks_available()).saturating_mul(vfs.fragment_size());
        if free < len.saturating_add(self.limits.min_free_bytes) {
            return Err(OutputError::DiskFull {
                free,
                incoming: len,
                min_free: self.limits.min_free_bytes,
            });
        }
        Ok(())
    }

    /// Starts receiving blob `sha` of `job_id`, `reservation.len` bytes long, into a private
    /// temporary file. One upload of a blob at a time: a second, while the first is still
    /// being read (a retry after the client lost its connection, which the coordinator has not
    /// noticed yet), is refused [`OutputError::Receiving`], which a runner tries again, rather
    /// than reserved twice (its room counted twice could refuse it for space, for good).
    pub fn begin(
        &self,
        job_id: &str,
        sha: &str,
        reservation: Reservation,
    ) -> Result<Upload, OutputError> {
        let dest = self.blob_path(job_id, sha)?;
        let key = (job_id.to_owned(), sha.to_owned());
        if !self
            .receiving
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone())
        {
            return Err(OutputError::Receiving {
                job_id: key.0,
                sha: key.1,
            });
        }
        let receiving = Receiving {
            set: Arc::clone(&self.receiving),
            key,
        };
        let dir = self.make_job_dir(job_id)?;
        let mut random = [0u8; 8];
        getrandom::fill(&mut random)
            .map_err(|e| io("naming an upload in", &dir)(std::io::Error::other(e)))?;
        let temp = dir.join(format!("{UPLOAD_PREFIX}{}", crate::auth::hex(&random)));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)
            .map_err(io("creating", &temp))?;
        Ok(Upload {
            file: Some(file),
            temp,
            dest,
            dir,
            expected: sha.to_owned(),
            hasher: Sha256::new(),
            got: 0,
            reservation,
            verified: false,
            _receiving: receiving,
        })
    }

    /// `job_id`'s directory, made if need be.
    fn make_job_dir(&self, job_id: &str) -> Result<PathBuf, OutputError> {
        let dir = self.job_dir(job_id)?;
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if !fs::symlink_metadata(&dir)
                    .map_err(io("inspecting", &dir))?
                    .is_dir()
                {
                    return Err(io("inspecting", &dir)(std::io::Error::other(
                        "is not a directory",
                    )));
                }
            }
            Err(e) => return Err(io("creating", &dir)(e)),
        }
        Ok(dir)
    }

    /// Appends `bytes`, which start at `offset` of the job's log, to `job_id`'s live log;
    /// returns its length after. Bytes it holds already (a retry) are not written twice; an
    /// `offset` past its end is refused. Callers serialize appends to one job (the API runs
    /// them under the database lock, after the lease check).
    pub fn append_live_log(
        &self,
        job_id: &str,
        offset: u64,
        bytes: &[u8],
    ) -> Result<u64, OutputError> {
        let path = self.make_job_dir(job_id)?.join(LIVE_LOG);
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(io("opening", &path))?;
        let meta = file.metadata().map_err(io("inspecting", &path))?;
        if !meta.is_file() {
            return Err(io("opening", &path)(std::io::Error::other(
                "is not a regular file",
            )));
        }
        let have = meta.len();
        if offset > have {
            return Err(OutputError::LiveLogGap {
                job_id: job_id.to_owned(),
                have,
                offset,
            });
        }
        let skip = usize::try_from(have - offset).unwrap_or(usize::MAX);
        let Some(new) = bytes.get(skip..).filter(|b| !b.is_empty()) else {
            return Ok(have);
        };
        let after = have.saturating_add(new.len() as u64);
        if after > MAX_LIVE_LOG_BYTES {
            return Err(OutputError::LiveLogFull {
                job_id: job_id.to_owned(),
            });
        }
        // Room promised to uploads in flight is not the live log's to take.
        let in_flight: u64 = {
            let reserved = self.reserved.lock().unwrap_or_else(PoisonError::into_inner);
            reserved.values().map(|h| h.bytes).sum()
        };
        self.check_free((new.len() as u64).saturating_add(in_flight))?;
        file.write_all(new).map_err(io("writing", &path))?;
        Ok(after)
    }

    /// Opens `job_id`'s live log for reading; `None` when it has none.
    pub fn open_live_log(&self, job_id: &str) -> Result<Option<(File, u64)>, OutputError> {
        self.open_file(&self.job_dir(job_id)?.join(LIVE_LOG))
    }

    /// Removes `job_id`'s live log (its result is recorded: the final log is a blob).
    pub fn remove_live_log(&self, job_id: &str) -> Result<(), OutputError> {
        let path = self.job_dir(job_id)?.join(LIVE_LOG);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Opens blob `sha` of `job_id` for reading; `None` when it is not stored.
    pub fn open_blob(&self, job_id: &str, sha: &str) -> Result<Option<(File, u64)>, OutputError> {
        self.open_file(&self.blob_path(job_id, sha)?)
    }

    /// Opens a regular file of the store for reading; `None` when there is none.
    fn open_file(&self, path: &Path) -> Result<Option<(File, u64)>, OutputError> {
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("opening", path)(e)),
        };
        let meta = file.metadata().map_err(io("inspecting", path))?;
        if !meta.is_file() {
            return Ok(None);
        }
        Ok(Some((file, meta.len())))
    }

    /// Removes everything stored for `job_id`; returns the bytes its files held, or `None`
    /// when it had nothing stored. For jobs no upload can come for any more (ended: finished,
    /// or their lease ran out).
    pub fn remove_job(&self, job_id: &str) -> Result<Option<u64>, OutputError> {
        let dir = self.job_dir(job_id)?;
        let bytes = self.stored(job_id)?.iter().map(|(_, n)| n).sum();
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("removing", &dir)(e)),
        }
    }

    /// Removes every blob of `job_id` whose sha256 is not in `keep`. Returns how many went.
    pub fn retain_only(&self, job_id: &str, keep: &HashSet<&str>) -> Result<usize, OutputError> {
        let dir = self.job_dir(job_id)?;
        let mut removed = 0;
        for (sha, _) in self.stored(job_id)? {
            if !keep.contains(sha.as_str()) {
                let path = dir.join(&sha);
                fs::remove_file(&path).map_err(io("removing", &path))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// What a job's uploads in flight hold.
#[derive(Debug, Clone, Copy, Default)]
struct Held {
    /// Their cost against the byte limit ([`charge`]).
    bytes: u64,
    /// How many.
    files: u64,
}

/// Room held for an upload in flight; released when dropped.
#[derive(Debug)]
pub struct Reservation {
    reserved: Arc<Mutex<HashMap<String, Held>>>,
    job_id: String,
    /// The bytes declared.
    len: u64,
    /// What they count for ([`charge`]).
    cost: u64,
}

impl Reservation {
    /// The bytes reserved.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing is reserved (an empty output).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut reserved = self.reserved.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = reserved.get_mut(&self.job_id) {
            held.bytes = held.bytes.saturating_sub(self.cost);
            held.files = held.files.saturating_sub(1);
            if held.files == 0 {
                reserved.remove(&self.job_id);
            }
        }
    }
}

/// A blob being received. Dropped before [`Upload::finish`], it removes its temporary file.
#[derive(Debug)]
pub struct Upload {
    file: Option<File>,
    temp: PathBuf,
    dest: PathBuf,
    dir: PathBuf,
    expected: String,
    hasher: Sha256,
    got: u64,
    reservation: Reservation,
    verified: bool,
    /// Marks the blob as being received until the upload ends, whichever way.
    _receiving: Receiving,
}

/// A blob of [`OutputStore::begin`]'s set of those being received; taken out when dropped.
#[derive(Debug)]
struct Receiving {
    set: Arc<Mutex<HashSet<(String, String)>>>,
    key: (String, String),
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

impl Upload {
    /// Writes the next bytes of the body, refusing any past the declared length.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), OutputError> {
        self.got = self.got.saturating_add(bytes.len() as u64);
        if self.got > self.reservation.len {
            return Err(OutputError::Length {
                declared: self.reservation.len,
                got: self.got,
            });
        }
        self.hasher.update(bytes);
        let Some(file) = self.file.as_mut() else {
            return Err(io("writing", &self.temp)(std::io::Error::other("closed")));
        };
        file.write_all(bytes).map_err(io("writing", &self.temp))
    }

    /// Checks length and digest, makes the bytes durable and renames them into place.
    pub fn finish(mut self) -> Result<(), OutputError> {
        self.verify()?;
        self.commit()
    }

    /// Checks length and digest and makes the bytes durable, without storing them yet:
    /// [`Upload::commit`] does, once the caller has checked the upload may still be kept.
    pub fn verify(&mut self) -> Result<(), OutputError> {
        if self.got != self.reservation.len {
            return Err(OutputError::Length {
                declared: self.reservation.len,
                got: self.got,
            });
        }
        let actual = crate::auth::hex(&std::mem::take(&mut self.hasher).finalize());
        if actual != self.expected {
            return Err(OutputError::Digest {
                expected: self.expected.clone(),
                actual,
            });
        }
        let file = self.file.take();
        if let Some(file) = &file {
            // A release artifact: on disk before anyone is told it is stored.
            file.sync_all().map_err(io("syncing", &self.temp))?;
        }
        self.verified = true;
        Ok(())
    }

    /// Renames bytes [`Upload::verify`] passed into place.
    pub fn commit(self) -> Result<(), OutputError> {
        if !self.verified {
            return Err(io("storing", &self.dest)(std::io::Error::other(
                "the upload was not verified",
            )));
        }
        // Another upload of the same bytes may have finished first: the same content either way.
        fs::rename(&self.temp, &self.dest).map_err(io("storing", &self.dest))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing", &self.dir))?;
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // After a successful finish the temporary name no longer exists.
        let _ = fs::remove_file(&self.temp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    const JOB: &str = "job-0123456789abcdef0123456789abcdef";

    fn sha(bytes: &[u8]) -> String {
        crate::auth::hex(&Sha256::digest(bytes))
    }

    fn store(dir: &TempDir, limits: OutputLimits) -> OutputStore {
        OutputStore::open(dir.path(), limits).unwrap()
    }

    fn put(s: &OutputStore, bytes: &[u8]) -> Result<(), OutputError> {
        let r = s.reserve(JOB, bytes.len() as u64)?;
        let mut u = s.begin(JOB, &sha(bytes), r)?;
        u.write(bytes)?;
        u.finish()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn a_blob_is_received_on_one_connection_at_a_time() {
        let tmp = TempDir::new("outputs-receiving");
        let s = store(&tmp, OutputLimits::default());
        let digest = sha(b"artifact");
        let first = s.begin(JOB, &digest, s.reserve(JOB, 8).unwrap()).unwrap();
        let e = s
            .begin(JOB, &digest, s.reserve(JOB, 8).unwrap())
            .unwrap_err();
        assert!(matches!(e, OutputError::Receiving { .. }), "{e}");
        // Another blob of the job is not held up.
        let other = s.begin(JOB, &sha(b"other"), s.reserve(JOB, 5).unwrap());
        assert!(other.is_ok());
        drop(first);
        assert!(s.begin(JOB, &digest, s.reserve(JOB, 8).unwrap()).is_ok());
    }

    #[test]
    fn a_blob_is_stored_under_its_digest_only_when_the_bytes_hash_to_it() {
        let tmp = TempDir::new("outputs");
        let s = store(&tmp, OutputLimits::default());
        put(&s, b"artifact").unwrap();
        assert!(s.contains(JOB, &sha(b"artifact")).unwrap());
        let (mut f, len) = s.open_blob(JOB, &sha(b"artifact")).unwrap().unwrap();
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut back).unwrap();
        assert_eq!((back.as_slice(), len), (&b"artifact"[..], 8));
        let mode = fs::metadata(
            tmp.path()
                .join(OUTPUTS_DIR)
                .join(JOB)
                .join(sha(b"artifact")),
        )
        .unwrap()
        .permissions()
        .mode();
        assert_eq!(mode & 0o777, 0o600);

        // Other bytes under that name: refused, nothing stored, no temporary left.
        let r = s.reserve(JOB, 8).unwrap();
        let mut u = s.begin(JOB, &sha(b"original"), r).unwrap();
        u.write(b"tampered").unwrap();
        let e = u.finish().unwrap_err();
        assert!(matches!(e, OutputError::Digest { .. }), "{e}");
        assert!(!s.contains(JOB, &sha(b"original")).unwrap());
        assert_eq!(
            files(&tmp.path().join(OUTPUTS_DIR).join(JOB)),
            vec![sha(b"artifact")]
        );
    }

    #[test]
    fn a_body_shorter_or_longer_than_declared_is_refused() {
        let tmp = TempDir::new("outputs");
        let s = store(&tmp, OutputLimits::default());
        let r = s.reserve(JOB, 4).unwrap();
        let mut u = s.begin(JOB, &sha(b"abcdef"), r).unwrap();
        let e = u.write(b"abcdef").unwrap_err();
        assert!(e.to_string().contains("not the 4"), "{e}");
        drop(u);
        let r = s.reserve(JOB, 10).unwrap();
        let mut u = s.begin(JOB, &sha(b"abc"), r).unwrap();
        u.write(b"abc").unwrap();
        let e = u.finish().unwrap_err();
        assert!(e.to_string().contains("body is 3 bytes, not the 10"), "{e}");
        assert!(files(&tmp.path().join(OUTPUTS_DIR).join(JOB)).is_empty());
    }

    #[test]
    fn a_job_cannot_hold_more_than_its_limit_counting_uploads_in_flight() {
        let tmp = TempDir::new("outputs");
        let s = store(
            &tmp,
            OutputLimits {
                max_job_bytes: 3 * BLOCK,
                max_job_files: 100,
                min_free_bytes: 0,
            },
        );
        // Six bytes take a block: that is what they count for.
        put(&s, b"123456").unwrap();
        let e = s.reserve(JOB, 2 * BLOCK + 1).unwrap_err();
        assert!(
            matches!(e, OutputError::TooLarge { held: BLOCK, .. }),
            "{e}"
        );
        let held = s.reserve(JOB, 2 * BLOCK).unwrap();
        // In flight counts: nothing more fits until it is released, not even an empty file.
        assert!(s.reserve(JOB, 0).is_err());
        drop(held);
        assert!(s.reserve(JOB, 2 * BLOCK).is_ok());
        // Another job has its own limit.
        assert!(s
            .reserve("job-ffffffffffffffffffffffffffffffff", 3 * BLOCK)
            .is_ok());
    }

    #[test]
    fn many_small_files_count_as_the_blocks_and_files_they_take() {
        let tmp = TempDir::new("outputs");
        let s = store(
            &tmp,
            OutputLimits {
                max_job_bytes: u64::MAX,
                max_job_files: 3,
                min_free_bytes: 0,
            },
        );
        put(&s, b"a").unwrap();
        put(&s, b"b").unwrap();
        let third = s.reserve(JOB, 1).unwrap();
        let e = s.reserve(JOB, 1).unwrap_err();
        assert!(
            matches!(e, OutputError::TooManyFiles { limit: 3, .. }),
            "{e}"
        );
        drop(third);
        put(&s, b"c").unwrap();
        assert!(s.reserve(JOB, 1).is_err());
        let tmp2 = TempDir::new("outputs");
        let small = store(
            &tmp2,
            OutputLimits {
                max_job_bytes: 2 * BLOCK,
                max_job_files: 100,
                min_free_bytes: 0,
            },
        );
        put(&small, b"").unwrap();
        put(&small, b"x").unwrap();
        let e = small.reserve(JOB, 1).unwrap_err();
        assert!(e.to_string().contains("whole 4096-byte blocks"), "{e}");
    }

    #[test]
    fn an_upload_that_would_fill_the_disk_is_refused_before_a_byte_is_read() {
        let tmp = TempDir::new("outputs");
        let s = store(
            &tmp,
            OutputLimits {
                max_job_bytes: u64::MAX,
                max_job_files: 100,
                min_free_bytes: u64::MAX / 2,
            },
        );
        let e = s.reserve(JOB, 1).unwrap_err();
        assert!(e.is_storage_full(), "{e}");
        assert!(e.to_string().contains("keeps free"), "{e}");
    }

    #[test]
    fn ids_and_digests_that_are_not_ours_never_become_paths() {
        let tmp = TempDir::new("outputs");
        let s = store(&tmp, OutputLimits::default());
        for id in [
            "../x",
            "job-",
            "job-0123456789ABCDEF0123456789abcdef",
            "job-/..",
        ] {
            assert!(
                matches!(s.reserve(id, 1), Err(OutputError::JobId(_))),
                "{id}"
            );
            assert!(s.contains(id, &sha(b"")).is_err(), "{id}");
        }
        for bad in ["../../etc/passwd", &"A".repeat(64), &"a".repeat(63)] {
            assert!(matches!(s.contains(JOB, bad), Err(OutputError::Sha256(_))));
        }
    }

    #[test]
    fn unlisted_blobs_are_removed_and_partial_uploads_do_not_survive_a_restart() {
        let tmp = TempDir::new("outputs");
        let s = store(&tmp, OutputLimits::default());
        put(&s, b"kept").unwrap();
        put(&s, b"parked").unwrap();
        let keep = HashSet::from([sha(b"kept")]);
        let keep: HashSet<&str> = keep.iter().map(String::as_str).collect();
        assert_eq!(s.retain_only(JOB, &keep).unwrap(), 1);
        assert_eq!(
            files(&tmp.path().join(OUTPUTS_DIR).join(JOB)),
            vec![sha(b"kept")]
        );
        // A coordinator stopped mid-upload leaves its temporary file; the next open removes it.
        let r = s.reserve(JOB, 3).unwrap();
        let mut u = s.begin(JOB, &sha(b"abc"), r).unwrap();
        u.write(b"ab").unwrap();
        std::mem::forget(u);
        assert_eq!(files(&tmp.path().join(OUTPUTS_DIR).join(JOB)).len(), 2);
        // Opening alone (an operator's command beside a serving coordinator) leaves it.
        let again = store(&tmp, OutputLimits::default());
        assert_eq!(files(&tmp.path().join(OUTPUTS_DIR).join(JOB)).len(), 2);
        again.remove_partial_uploads().unwrap();
        assert_eq!(
            files(&tmp.path().join(OUTPUTS_DIR).join(JOB)),
            vec![sha(b"kept")]
        );
        // Pruning a job removes all of it and says how much.
        assert_eq!(again.remove_job(JOB).unwrap(), Some(4));
        assert!(!tmp.path().join(OUTPUTS_DIR).join(JOB).exists());
        assert_eq!(again.remove_job(JOB).unwrap(), None);
    }
}
