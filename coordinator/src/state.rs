//! The coordinator's state: one SQLite database (`coordinator.db`) and the transactions that
//! keep its promises.
//!
//! Why SQLite: registration, leasing and results are each a read-check-write that must not
//! interleave with another (one token, one runner; one job, one lease; one result). SQLite
//! gives that with `BEGIN IMMEDIATE` (a writer lock taken before the read), survives a
//! restart, needs no server, and is bundled into the binary. WAL mode lets the operator's CLI
//! (`registration-token`, `runners remove`) write while `serve` runs; `synchronous = FULL`
//! so a committed lease or result survives a power loss. A JSON file rewritten per change was
//! rejected (no atomic read-check-write across processes without a lock of our own), and so was
//! an in-memory queue (a restart would forget leases and let a job run twice).
//!
//! Every refusal the protocol defines (a used token, a job leased to someone else, a late
//! result) is decided here, inside the transaction that would have acted, so no check can go
//! stale between deciding and doing.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulwark_protocol::control::{JobState, Lease, ResultReport};
use bulwark_protocol::job::DEFAULT_TIMEOUT;
use bulwark_protocol::v1::lookup::UriPattern;
use bulwark_protocol::{JobSpec, Trust};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

/// File name of the database in the state directory.
pub const DB_NAME: &str = "coordinator.db";

pub use bulwark_protocol::control::LEASE_GRACE_SECS;

/// The schema version this build reads and writes. Versions 1 (before logs were reported), 2
/// (before jobs could be cancelled), 3 (before the inventory), 4 (an inventory whose keys
/// were made another way, never released) and 5 (an inventory without dependencies' uris) are
/// upgraded in place when opened ([`Db::open`]).
const SCHEMA_VERSION: &str = "6";

/// How long a writer waits for another (the CLI and the server share the file).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The fleet's inventory ([`crate::inventory`]): one row per key of a finished job's provenance
/// ([`crate::inventory::keys`]: `d:<digest>`, `c:<git commit>`, `u:<uri>`; `x:unindexed` for a job whose
/// provenance could not be read) and that job.
const INVENTORY_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS inventory (
    key    TEXT NOT NULL,
    job_id TEXT NOT NULL,
    PRIMARY KEY (key, job_id)
) WITHOUT ROWID;
";

const SCHEMA: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE registration_tokens (
    sha256     TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER,
    runner_id  TEXT
);
CREATE TABLE runners (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    public_key    TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    removed_at    INTEGER
);
CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    trust            TEXT NOT NULL,
    spec             TEXT NOT NULL,
    state            TEXT NOT NULL,
    runner_id        TEXT,
    submitted_at     INTEGER NOT NULL,
    leased_at        INTEGER,
    lease_expires_at INTEGER,
    finished_at      INTEGER,
    result           TEXT,
    provenance       TEXT,
    logs             TEXT,
    cancel_requested_at INTEGER
);
CREATE INDEX jobs_by_state ON jobs (state, submitted_at);
CREATE TABLE nonces (
    runner_id  TEXT NOT NULL,
    nonce      TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (runner_id, nonce)
);
CREATE INDEX nonces_by_expiry ON nonces (expires_at);
";

/// What went wrong with the state, or what it refused.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// `init` found a database already there.
    #[error("{}: exists already (an existing coordinator state is never overwritten)", path.display())]
    Exists {
        /// The database file.
        path: PathBuf,
    },
    /// Opening (or creating) the database failed.
    #[error("opening the coordinator database {}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// Creating the schema failed.
    #[error("creating the coordinator database schema")]
    CreateSchema(#[source] rusqlite::Error),
    /// The database was made by another version, or not by `init`.
    #[error("coordinator database {}: schema version {found:?}, this build reads {SCHEMA_VERSION:?}", path.display())]
    SchemaVersion {
        /// The database file.
        path: PathBuf,
        /// The version found, if any.
        found: Option<String>,
    },
    /// Upgrading an older schema failed (nothing was changed).
    #[error("coordinator database {}: upgrading its schema to version {SCHEMA_VERSION}", path.display())]
    Upgrade {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// Listing jobs failed.
    #[error("listing jobs")]
    ListJobs(#[source] rusqlite::Error),
    /// Reading the inventory failed.
    #[error("reading the inventory")]
    Inventory(#[source] rusqlite::Error),
    /// Writing a job's exported provenance failed.
    #[error("exporting the provenance of job {job_id}")]
    Export {
        /// The job.
        job_id: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading the `meta` table failed.
    #[error("reading the coordinator's settings (meta table)")]
    ReadMeta(#[source] rusqlite::Error),
    /// Storing a registration token failed.
    #[error("storing a registration token")]
    StoreRegistrationToken(#[source] rusqlite::Error),
    /// Registering a runner failed.
    #[error("registering a runner")]
    Register(#[source] rusqlite::Error),
    /// The registration token is unknown, used or expired (one message for all three).
    #[error("registration token is not valid (unknown, used or expired)")]
    RegistrationTokenNotValid,
    /// Reading runners failed.
    #[error("reading runners")]
    ReadRunners(#[source] rusqlite::Error),
    /// Reading what the metrics show failed.
    #[error("reading the metrics from the database")]
    Metrics(#[source] rusqlite::Error),
    /// Removing a runner failed.
    #[error("removing runner {runner_id}")]
    RemoveRunner {
        /// The runner.
        runner_id: String,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// Replacing a runner's key failed.
    #[error("replacing the key of runner {runner_id}")]
    Rekey {
        /// The runner.
        runner_id: String,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// Recording a nonce failed.
    #[error("recording a request nonce")]
    RecordNonce(#[source] rusqlite::Error),
    /// Reading whether a nonce was used failed.
    #[error("reading request nonces")]
    ReadNonce(#[source] rusqlite::Error),
    /// The nonce was used before within the clock-skew window.
    #[error("signed request refused: nonce already used (a replayed request)")]
    NonceReused,
    /// The runner is unknown or was removed.
    #[error("signed request refused: runner {runner_id} is unknown or removed")]
    RunnerNotActive {
        /// The runner id the request named.
        runner_id: String,
    },
    /// Queueing a job failed.
    #[error("queueing job {job_id}")]
    SubmitJob {
        /// The job.
        job_id: String,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// Reading a job failed.
    #[error("reading job {job_id}")]
    ReadJob {
        /// The job.
        job_id: String,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored job row does not parse (written by another version, or edited by hand).
    #[error("job {job_id}: its stored {column} does not parse")]
    CorruptJob {
        /// The job.
        job_id: String,
        /// The column.
        column: &'static str,
    },
    /// Leasing a job failed.
    #[error("leasing a job to runner {runner_id}")]
    Lease {
        /// The runner.
        runner_id: String,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// Recording a result failed.
    #[error("recording the result of job {job_id}")]
    RecordResult {
        /// The job.
        job_id: String,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// The job does not exist, or is not leased to the asking runner.
    #[error("job {job_id} is not leased to runner {runner_id}")]
    NotLeasedToRunner {
        /// The job.
        job_id: String,
        /// The asking runner.
        runner_id: String,
    },
    /// The job's lease is over (identity tokens are only minted while it lasts).
    #[error("job {job_id}: its lease is over")]
    LeaseOver {
        /// The job.
        job_id: String,
    },
    /// An untrusted job asked for an identity token.
    #[error("job {job_id} is untrusted: untrusted jobs never get identity tokens")]
    Untrusted {
        /// The job.
        job_id: String,
    },
    /// A second result for a job.
    #[error("job {job_id} already has a result")]
    AlreadyFinished {
        /// The job.
        job_id: String,
    },
    /// A result after the lease ended: the job is (now) recorded as lost.
    #[error("job {job_id}: the lease ended before the result came; the job is recorded as lost")]
    LeaseExpired {
        /// The job.
        job_id: String,
    },
    /// An identity token for a job the operator cancelled.
    #[error("job {job_id} was cancelled by the operator: it gets no identity token")]
    Cancelled {
        /// The job.
        job_id: String,
    },
    /// No such job.
    #[error("job {job_id} not found")]
    NoSuchJob {
        /// The job.
        job_id: String,
    },
    /// A cancellation of a job that has ended.
    #[error("job {job_id} has ended ({state}): there is nothing to cancel")]
    Ended {
        /// The job.
        job_id: String,
        /// `finished` or `lost`.
        state: &'static str,
    },
    /// Recording a cancellation failed.
    #[error("cancelling job {job_id}")]
    Cancel {
        /// The job.
        job_id: String,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
}

/// What [`Db::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// The job was queued: it is finished now, `refused`, and will never run.
    BeforeItRan,
    /// The job is leased: its runner stops it when it next asks (every poll interval) and
    /// reports what ran. Asking again changes nothing.
    Requested,
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How long a lease of `spec` lasts: the job's timeout (`resources.timeout`, or the protocol's
/// default) plus [`LEASE_GRACE_SECS`]. A timeout that does not parse counts as the default (the
/// submit endpoint refuses one, so only a hand-edited row has it).
pub fn lease_seconds(spec: &JobSpec) -> u64 {
    let timeout = spec
        .resources
        .timeout
        .as_deref()
        .and_then(|t| bulwark_protocol::parse_duration(t).ok())
        .unwrap_or(DEFAULT_TIMEOUT);
    timeout.as_secs().saturating_add(LEASE_GRACE_SECS)
}

/// A registered runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runner {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its public key, SPKI PEM.
    pub public_key: String,
    /// When it registered.
    pub registered_at: u64,
    /// When the operator removed it.
    pub removed_at: Option<u64>,
}

/// A job as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Its id.
    pub id: String,
    /// Its name (the spec's).
    pub name: String,
    /// The trust level the submitter gave.
    pub trust: Trust,
    /// The spec as submitted.
    pub spec: JobSpec,
    /// Where it is.
    pub state: JobState,
    /// The runner it was leased to.
    pub runner_id: Option<String>,
    /// When it was queued.
    pub submitted_at: u64,
    /// When its lease ends.
    pub lease_expires_at: Option<u64>,
    /// When the operator asked for it to be cancelled.
    pub cancel_requested_at: Option<u64>,
    /// The reported result.
    pub result: Option<ResultReport>,
}

/// A job handed to a runner that asked for one ([`Db::offer`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// The lease, as the runner is answered.
    pub lease: Lease,
    /// Whether it was leased to this runner already (the same lease, offered again because
    /// the runner did not list it as held), rather than leased now.
    pub again: bool,
}

/// One line of `jobs list`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JobSummary {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its trust level.
    pub trust: Trust,
    /// Where it is.
    pub state: JobState,
    /// The runner it was leased to.
    pub runner_id: Option<String>,
    /// When it was queued (seconds since the epoch).
    pub submitted_at: u64,
    /// When its result was recorded.
    pub finished_at: Option<u64>,
    /// `result.status` of its result, when it is text (the runner's word: shown escaped).
    pub status: Option<String>,
}

fn parse_state(s: &str) -> Option<JobState> {
    Some(match s {
        "queued" => JobState::Queued,
        "leased" => JobState::Leased,
        "finished" => JobState::Finished,
        "lost" => JobState::Lost,
        _ => return None,
    })
}

fn parse_trust(s: &str) -> Option<Trust> {
    match s {
        "trusted" => Some(Trust::Trusted),
        "untrusted" => Some(Trust::Untrusted),
        _ => None,
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// An open coordinator database.
#[derive(Debug)]
pub struct Db {
    conn: Connection,
    path: PathBuf,
}

impl Db {
    /// Creates the database at `path` (which must not exist) with the schema, WAL mode and
    /// the issuer URL.
    pub fn create(path: &Path, issuer: &str) -> Result<Db, StateError> {
        if path.symlink_metadata().is_ok() {
            return Err(StateError::Exists {
                path: path.to_owned(),
            });
        }
        let mut db = Db::connect(path)?;
        let tx = db
            .conn
            .transaction_with_behavior(TransactionBehavior::Exclusive)
            .map_err(StateError::CreateSchema)?;
        tx.execute_batch(SCHEMA).map_err(StateError::CreateSchema)?;
        tx.execute_batch(INVENTORY_SCHEMA)
            .map_err(StateError::CreateSchema)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?1), ('issuer', ?2)",
            params![SCHEMA_VERSION, issuer],
        )
        .map_err(StateError::CreateSchema)?;
        tx.commit().map_err(StateError::CreateSchema)?;
        Ok(db)
    }

    /// Opens an existing database made by [`Db::create`].
    pub fn open(path: &Path) -> Result<Db, StateError> {
        if !path.is_file() {
            return Err(StateError::Open {
                path: path.to_owned(),
                source: rusqlite::Error::InvalidPath(path.to_owned()),
            });
        }
        let mut db = Db::connect(path)?;
        let found = db.meta("schema_version").ok().flatten();
        match found.as_deref() {
            Some(SCHEMA_VERSION) => {}
            Some("1" | "2" | "3" | "4" | "5") => {
                db.upgrade().map_err(|source| StateError::Upgrade {
                    path: path.to_owned(),
                    source,
                })?
            }
            _ => {
                return Err(StateError::SchemaVersion {
                    path: path.to_owned(),
                    found,
                })
            }
        }
        Ok(db)
    }

    /// Schema 1 to 2 (the jobs' reported logs), 2 to 3 (cancellation requests) and 3 (or the
    /// unreleased 4, or 5) to 6 (the inventory, made afresh from every finished job's
    /// provenance), as far as needed. One transaction, so a failure leaves the database as it was.
    fn upgrade(&mut self) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Exclusive)?;
        // Another process may have upgraded it since the version was read.
        let found: String = tx.query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )?;
        if found == "1" {
            tx.execute_batch("ALTER TABLE jobs ADD COLUMN logs TEXT;")?;
        }
        if found == "1" || found == "2" {
            tx.execute_batch("ALTER TABLE jobs ADD COLUMN cancel_requested_at INTEGER;")?;
        }
        if found != SCHEMA_VERSION {
            // Made afresh, also over a version 4 or 5 inventory.
            tx.execute_batch(INVENTORY_SCHEMA)?;
            tx.execute_batch("DELETE FROM inventory;")?;
            // Row by row: a large fleet's provenance is never held in memory at once.
            let mut unreadable = 0usize;
            let mut stmt = tx.prepare(
                "SELECT id, provenance FROM jobs
                 WHERE state = 'finished' AND provenance IS NOT NULL",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let id: String = row.get(0)?;
                let provenance: String = row.get(1)?;
                let statements = crate::inventory::read(&provenance).ok();
                if statements.is_none() {
                    unreadable += 1;
                    tracing::warn!(job_id = %id, "its provenance cannot be indexed");
                }
                index_job(&tx, &id, statements.as_deref())?;
            }
            drop(rows);
            drop(stmt);
            if unreadable > 0 {
                tracing::warn!(
                    jobs = unreadable,
                    "finished jobs whose provenance could not be read are counted as unindexed"
                );
            }
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'schema_version'",
                [SCHEMA_VERSION],
            )?;
        }
        tx.commit()
    }

    fn connect(path: &Path) -> Result<Db, StateError> {
        let err = |source| StateError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(err(rusqlite::Error::InvalidParameterName(format!(
                "journal_mode stayed {mode}, WAL required"
            ))));
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        Ok(Db {
            conn,
            path: path.to_owned(),
        })
    }

    /// Another connection to the same database, for a long read (an inventory query) that
    /// must not hold this one: WAL lets it read while others write.
    pub fn reopen(&self) -> Result<Db, StateError> {
        Db::connect(&self.path)
    }

    fn meta(&self, key: &str) -> Result<Option<String>, StateError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(StateError::ReadMeta)
    }

    /// The issuer URL recorded at `init`.
    pub fn issuer(&self) -> Result<String, StateError> {
        self.meta("issuer")?
            .ok_or(StateError::ReadMeta(rusqlite::Error::QueryReturnedNoRows))
    }

    /// Stores the sha256 (hex) of a new registration token valid until `expires_at`.
    pub fn add_registration_token(
        &self,
        sha256_hex: &str,
        expires_at: u64,
    ) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT INTO registration_tokens (sha256, expires_at) VALUES (?1, ?2)",
                params![sha256_hex, to_i64(expires_at)],
            )
            .map(drop)
            .map_err(StateError::StoreRegistrationToken)
    }

    /// Consumes the registration token whose sha256 is `token_sha256_hex` and stores the
    /// runner, in one transaction: of two registrations racing with one token, one commits and
    /// the other finds the token used.
    pub fn register_runner(
        &mut self,
        token_sha256_hex: &str,
        runner: &Runner,
        now: u64,
    ) -> Result<(), StateError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StateError::Register)?;
        let row: Option<(i64, Option<i64>)> = tx
            .query_row(
                "SELECT expires_at, used_at FROM registration_tokens WHERE sha256 = ?1",
                [token_sha256_hex],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(StateError::Register)?;
        match row {
            Some((expires_at, None)) if to_u64(expires_at) > now => {}
            _ => return Err(StateError::RegistrationTokenNotValid),
        }
        let changed = tx
            .execute(
                "UPDATE registration_tokens SET used_at = ?1, runner_id = ?2
                 WHERE sha256 = ?3 AND used_at IS NULL",
                params![to_i64(now), runner.id, token_sha256_hex],
            )
            .map_err(StateError::Register)?;
        if changed != 1 {
            return Err(StateError::RegistrationTokenNotValid);
        }
        tx.execute(
            "INSERT INTO runners (id, name, public_key, registered_at) VALUES (?1, ?2, ?3, ?4)",
            params![runner.id, runner.name, runner.public_key, to_i64(now)],
        )
        .map_err(StateError::Register)?;
        tx.commit().map_err(StateError::Register)
    }

    /// Every runner ever registered, oldest first, removed ones included.
    pub fn runners(&self) -> Result<Vec<Runner>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, name, public_key, registered_at, removed_at FROM runners
                 ORDER BY registered_at, rowid",
            )
            .map_err(StateError::ReadRunners)?;
        let rows = stmt
            .query_map([], runner_from_row)
            .map_err(StateError::ReadRunners)?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(StateError::ReadRunners)
    }

    /// The runner `id` if it is registered and not removed.
    pub fn active_runner(&self, id: &str) -> Result<Option<Runner>, StateError> {
        self.conn
            .query_row(
                "SELECT id, name, public_key, registered_at, removed_at FROM runners
                 WHERE id = ?1 AND removed_at IS NULL",
                [id],
                runner_from_row,
            )
            .optional()
            .map_err(StateError::ReadRunners)
    }

    /// Replaces active runner `id`'s public key with `public_key` (SPKI PEM): signatures by
    /// its old key stop working at once. `false` when no active runner has that id.
    pub fn set_runner_key(&mut self, id: &str, public_key: &str) -> Result<bool, StateError> {
        let changed = self
            .conn
            .execute(
                "UPDATE runners SET public_key = ?1 WHERE id = ?2 AND removed_at IS NULL",
                params![public_key, id],
            )
            .map_err(|source| StateError::Rekey {
                runner_id: id.to_owned(),
                source,
            })?;
        Ok(changed == 1)
    }

    /// Removes runner `id`: its signatures stop working at once and the jobs leased to it are
    /// recorded as lost (it can no longer report them). `false` when no active runner has that
    /// id.
    pub fn remove_runner(&mut self, id: &str, now: u64) -> Result<bool, StateError> {
        let err = |source| StateError::RemoveRunner {
            runner_id: id.to_owned(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let changed = tx
            .execute(
                "UPDATE runners SET removed_at = ?1 WHERE id = ?2 AND removed_at IS NULL",
                params![to_i64(now), id],
            )
            .map_err(err)?;
        tx.execute(
            "UPDATE jobs SET state = 'lost' WHERE runner_id = ?1 AND state = 'leased'",
            [id],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(changed == 1)
    }

    /// Records `nonce` for `runner_id` until `keep_until`, refusing one already recorded, in
    /// one transaction with the check that the runner is still active (a removal racing with
    /// a request wins). Expired nonces are pruned on the way.
    pub fn use_nonce(
        &mut self,
        runner_id: &str,
        nonce: &str,
        keep_until: u64,
        now: u64,
    ) -> Result<(), StateError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StateError::RecordNonce)?;
        tx.execute("DELETE FROM nonces WHERE expires_at < ?1", [to_i64(now)])
            .map_err(StateError::RecordNonce)?;
        let active: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM runners WHERE id = ?1 AND removed_at IS NULL)",
                [runner_id],
                |r| r.get(0),
            )
            .map_err(StateError::RecordNonce)?;
        if !active {
            return Err(StateError::RunnerNotActive {
                runner_id: runner_id.to_owned(),
            });
        }
        let inserted = tx
            .execute(
                "INSERT OR IGNORE INTO nonces (runner_id, nonce, expires_at) VALUES (?1, ?2, ?3)",
                params![runner_id, nonce, to_i64(keep_until)],
            )
            .map_err(StateError::RecordNonce)?;
        if inserted != 1 {
            return Err(StateError::NonceReused);
        }
        tx.commit().map_err(StateError::RecordNonce)
    }

    /// Whether `runner_id` has used `nonce` in a request still remembered ([`Db::use_nonce`]):
    /// read only, for the checks made before a body is read.
    pub fn nonce_used(&self, runner_id: &str, nonce: &str) -> Result<bool, StateError> {
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM nonces WHERE runner_id = ?1 AND nonce = ?2)",
                [runner_id, nonce],
                |r| r.get(0),
            )
            .map_err(StateError::ReadNonce)
    }

    /// Queues a job.
    pub fn submit_job(
        &self,
        job_id: &str,
        spec: &JobSpec,
        trust: Trust,
        now: u64,
    ) -> Result<(), StateError> {
        let err = |source| StateError::SubmitJob {
            job_id: job_id.to_owned(),
            source,
        };
        let spec_json = serde_json::to_string(spec)
            .map_err(|e| err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        self.conn
            .execute(
                "INSERT INTO jobs (id, name, trust, spec, state, submitted_at)
                 VALUES (?1, ?2, ?3, ?4, 'queued', ?5)",
                params![job_id, spec.name, trust.as_str(), spec_json, to_i64(now)],
            )
            .map(drop)
            .map_err(err)
    }

    /// The newest `limit` jobs, newest first, with every lease that ended unreported recorded
    /// as lost first.
    pub fn list_jobs(&mut self, limit: u32, now: u64) -> Result<Vec<JobSummary>, StateError> {
        record_lost_leases(&self.conn, now).map_err(StateError::ListJobs)?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, name, trust, state, runner_id, submitted_at, finished_at,
                        CASE WHEN json_type(result, '$.status') = 'text'
                             THEN json_extract(result, '$.status') END
                 FROM jobs ORDER BY submitted_at DESC, id LIMIT ?1",
            )
            .map_err(StateError::ListJobs)?;
        let rows = stmt
            .query_map([limit], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                    r.get::<_, Option<String>>(7)?,
                ))
            })
            .map_err(StateError::ListJobs)?;
        let mut jobs = Vec::new();
        for row in rows {
            let (id, name, trust, state, runner_id, submitted_at, finished_at, status) =
                row.map_err(StateError::ListJobs)?;
            let corrupt = |column| StateError::CorruptJob {
                job_id: id.clone(),
                column,
            };
            jobs.push(JobSummary {
                trust: parse_trust(&trust).ok_or_else(|| corrupt("trust"))?,
                state: parse_state(&state).ok_or_else(|| corrupt("state"))?,
                id,
                name,
                runner_id,
                submitted_at: to_u64(submitted_at),
                finished_at: finished_at.map(to_u64),
                status,
            });
        }
        Ok(jobs)
    }

    /// Calls `f` with the id and provenance of every finished job that has provenance, oldest
    /// first.
    pub fn each_provenance(
        &self,
        mut f: impl FnMut(&str, &str) -> std::io::Result<()>,
    ) -> Result<(), StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, provenance FROM jobs
                 WHERE state = 'finished' AND provenance IS NOT NULL
                 ORDER BY finished_at, id",
            )
            .map_err(StateError::ListJobs)?;
        let mut rows = stmt.query([]).map_err(StateError::ListJobs)?;
        while let Some(row) = rows.next().map_err(StateError::ListJobs)? {
            let id: String = row.get(0).map_err(StateError::ListJobs)?;
            let provenance: String = row.get(1).map_err(StateError::ListJobs)?;
            f(&id, &provenance).map_err(|source| StateError::Export {
                job_id: id.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Ids of the jobs that ended at or before `before`: finished, or their lease ran out
    /// without a result. No upload can come for them any more.
    pub fn jobs_ended_before(&self, before: u64) -> Result<Vec<String>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id FROM jobs
                 WHERE (state = 'finished' AND finished_at <= ?1)
                    OR (state IN ('leased', 'lost') AND lease_expires_at <= ?1)
                 ORDER BY id",
            )
            .map_err(StateError::ListJobs)?;
        let ids = stmt
            .query_map([to_i64(before)], |r| r.get(0))
            .map_err(StateError::ListJobs)?
            .collect::<rusqlite::Result<Vec<String>>>()
            .map_err(StateError::ListJobs)?;
        Ok(ids)
    }

    /// Ids of the jobs whose lease ran out by `now` without a result (lost), each recorded as
    /// lost first.
    pub fn unreported_jobs_ended(&mut self, now: u64) -> Result<Vec<String>, StateError> {
        record_lost_leases(&self.conn, now).map_err(StateError::ListJobs)?;
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM jobs WHERE state = 'lost' ORDER BY id")
            .map_err(StateError::ListJobs)?;
        let ids = stmt
            .query_map([], |r| r.get(0))
            .map_err(StateError::ListJobs)?
            .collect::<rusqlite::Result<Vec<String>>>()
            .map_err(StateError::ListJobs)?;
        Ok(ids)
    }

    /// Job `job_id`, with a lease that ended unreported recorded as lost first.
    pub fn job(&mut self, job_id: &str, now: u64) -> Result<Option<Job>, StateError> {
        let err = |source| StateError::ReadJob {
            job_id: job_id.to_owned(),
            source,
        };
        self.conn
            .execute(
                "UPDATE jobs SET state = 'lost'
                 WHERE id = ?1 AND state = 'leased' AND lease_expires_at <= ?2",
                params![job_id, to_i64(now)],
            )
            .map_err(err)?;
        read_job(&self.conn, job_id)
    }

    /// Leases the oldest queued job to `runner_id`, as [`Db::offer`] does for a runner that
    /// does not say what it holds.
    pub fn lease(&mut self, runner_id: &str, now: u64) -> Result<Option<Lease>, StateError> {
        Ok(self.offer(runner_id, None, now)?.map(|o| o.lease))
    }

    /// What `runner_id` gets when it asks for a job, after every lease that ended without a
    /// result is recorded as lost. `None` when there is nothing for it.
    ///
    /// With `holding` (the jobs the runner says it has leased and not finished reporting:
    /// [`bulwark_protocol::control::LeaseRequest`]), first the oldest job leased to this runner
    /// whose lease is live, which the operator has not cancelled and which `holding` does not
    /// name, offered again with the same lease (its answer was lost, or the runner restarted);
    /// then, as without `holding`, the oldest queued job, leased for [`lease_seconds`].
    ///
    /// Refused for a runner that is not active, in the same transaction: a removal that
    /// commits between the request's authentication and its lease must not leave a job leased
    /// to a removed runner (it would sit there, unreported, until its lease ran out).
    pub fn offer(
        &mut self,
        runner_id: &str,
        holding: Option<&[String]>,
        now: u64,
    ) -> Result<Option<Offer>, StateError> {
        let err = |source| StateError::Lease {
            runner_id: runner_id.to_owned(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let active: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM runners WHERE id = ?1 AND removed_at IS NULL)",
                [runner_id],
                |r| r.get(0),
            )
            .map_err(err)?;
        if !active {
            return Err(StateError::RunnerNotActive {
                runner_id: runner_id.to_owned(),
            });
        }
        record_lost_leases(&tx, now).map_err(err)?;
        if let Some(holding) = holding {
            // The list goes in as one JSON parameter: however long it is (the API bounds it),
            // the statement stays one.
            let holding = serde_json::to_string(holding)
                .map_err(|e| err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
            // Few rows: the jobs leased to this runner. A leased job whose record no longer
            // parses is passed over (its lease ends and it is lost), rather than this runner's
            // every lease request failing on it, or it hiding a lost answer behind it.
            let candidates: Vec<String> = {
                let mut stmt = tx
                    .prepare(
                        "SELECT id FROM jobs
                         WHERE state = 'leased' AND runner_id = ?1 AND lease_expires_at > ?2
                           AND cancel_requested_at IS NULL
                           AND id NOT IN (SELECT value FROM json_each(?3))
                         ORDER BY leased_at, rowid",
                    )
                    .map_err(err)?;
                let rows = stmt
                    .query_map(params![runner_id, to_i64(now), holding], |r| r.get(0))
                    .map_err(err)?;
                rows.collect::<Result<_, _>>().map_err(err)?
            };
            let mut again = None;
            for job_id in candidates {
                match read_job(&tx, &job_id) {
                    Err(StateError::CorruptJob { .. }) => continue,
                    read => {
                        again = read?;
                        break;
                    }
                }
            }
            if let Some(job) = again {
                // The leases that ran out are recorded lost, as for a new lease.
                tx.commit().map_err(err)?;
                // Read in this transaction, which also found it live: it ends after `now`.
                let expires_at = job.lease_expires_at.unwrap_or(now);
                return Ok(Some(Offer {
                    lease: Lease {
                        job_id: job.id,
                        trust: job.trust,
                        spec: job.spec,
                        expires_at,
                    },
                    again: true,
                }));
            }
        }
        // A queued job whose stored record does not parse (written by another version of the
        // coordinator, or edited by hand) could never be leased: it is finished as refused,
        // saying why, and the next one is taken. Left queued, it would fail every lease
        // request of every runner, and the whole queue behind it would wait.
        let (job_id, job) = loop {
            let next: Option<String> = tx
                .query_row(
                    "SELECT id FROM jobs WHERE state = 'queued'
                     ORDER BY submitted_at, rowid LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .map_err(err)?;
            let Some(job_id) = next else {
                tx.commit().map_err(err)?;
                return Ok(None);
            };
            match read_job(&tx, &job_id) {
                Ok(Some(job)) => break (job_id, job),
                // (Not within this transaction, which found it: as for no job queued.)
                Ok(None) => {
                    tx.commit().map_err(err)?;
                    return Ok(None);
                }
                Err(StateError::CorruptJob { column, .. }) => {
                    refuse_unreadable(&tx, &job_id, column, now).map_err(err)?;
                }
                Err(e) => return Err(e),
            }
        };
        let expires_at = now.saturating_add(lease_seconds(&job.spec));
        tx.execute(
            "UPDATE jobs SET state = 'leased', runner_id = ?1, leased_at = ?2, lease_expires_at = ?3
             WHERE id = ?4 AND state = 'queued'",
            params![runner_id, to_i64(now), to_i64(expires_at), job_id],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Some(Offer {
            lease: Lease {
                job_id,
                trust: job.trust,
                spec: job.spec,
                expires_at,
            },
            again: false,
        }))
    }

    /// Job `job_id` if an identity token may be minted for it on behalf of `runner_id`: it is
    /// leased to that runner, the lease is live, and it is trusted.
    pub fn job_for_id_token(
        &mut self,
        job_id: &str,
        runner_id: &str,
        now: u64,
    ) -> Result<Job, StateError> {
        let job = self.job_leased_to(job_id, runner_id, now)?;
        if job.trust != Trust::Trusted {
            return Err(StateError::Untrusted {
                job_id: job_id.to_owned(),
            });
        }
        // A job the operator cancelled gets no new credentials while it is being stopped.
        if job.cancel_requested_at.is_some() {
            return Err(StateError::Cancelled {
                job_id: job_id.to_owned(),
            });
        }
        Ok(job)
    }

    /// Job `job_id` if it is leased to `runner_id` and the lease is live: what a runner must
    /// hold to act for a job (ask for its identity token, upload its outputs).
    pub fn job_leased_to(
        &mut self,
        job_id: &str,
        runner_id: &str,
        now: u64,
    ) -> Result<Job, StateError> {
        let not_leased = || StateError::NotLeasedToRunner {
            job_id: job_id.to_owned(),
            runner_id: runner_id.to_owned(),
        };
        let job = read_job(&self.conn, job_id)?.ok_or_else(not_leased)?;
        if job.runner_id.as_deref() != Some(runner_id) {
            return Err(not_leased());
        }
        let live = job.state == JobState::Leased && job.lease_expires_at.is_some_and(|e| now < e);
        if !live {
            return Err(StateError::LeaseOver {
                job_id: job_id.to_owned(),
            });
        }
        Ok(job)
    }

    /// Cancels `job_id` for the operator: a queued job is finished at once as `refused` (it
    /// never runs); a leased one is marked, and its runner stops it and reports what ran
    /// ([`Db::cancel_requested`]). A job that has ended is refused.
    pub fn cancel(&mut self, job_id: &str, now: u64) -> Result<Cancelled, StateError> {
        let err = |source| StateError::Cancel {
            job_id: job_id.to_owned(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        record_lost_leases(&tx, now).map_err(err)?;
        let job = read_job(&tx, job_id)?.ok_or_else(|| StateError::NoSuchJob {
            job_id: job_id.to_owned(),
        })?;
        let done = match job.state {
            JobState::Queued => {
                let result = refused_result(
                    job.trust,
                    &job.name,
                    "cancelled by the operator before it ran",
                );
                tx.execute(
                    "UPDATE jobs SET state = 'finished', finished_at = ?2, cancel_requested_at = ?2,
                            result = ?3
                     WHERE id = ?1",
                    params![job_id, to_i64(now), result],
                )
                .map_err(err)?;
                Cancelled::BeforeItRan
            }
            JobState::Leased => {
                tx.execute(
                    "UPDATE jobs SET cancel_requested_at = COALESCE(cancel_requested_at, ?2)
                     WHERE id = ?1",
                    params![job_id, to_i64(now)],
                )
                .map_err(err)?;
                Cancelled::Requested
            }
            JobState::Finished | JobState::Lost => {
                return Err(StateError::Ended {
                    job_id: job_id.to_owned(),
                    state: if job.state == JobState::Lost {
                        "lost"
                    } else {
                        "finished"
                    },
                })
            }
        };
        tx.commit().map_err(err)?;
        Ok(done)
    }

    /// Whether the operator asked for `job_id`, leased to `runner_id` with its lease live, to
    /// be cancelled (the runner's heartbeat).
    pub fn cancel_requested(
        &mut self,
        job_id: &str,
        runner_id: &str,
        now: u64,
    ) -> Result<bool, StateError> {
        Ok(self
            .job_leased_to(job_id, runner_id, now)?
            .cancel_requested_at
            .is_some())
    }

    /// Records the result of `job_id` reported by `runner_id`: only the lease holder, only
    /// once, only while the lease lasts (a late result records the job as lost and is refused).
    pub fn record_result(
        &mut self,
        job_id: &str,
        runner_id: &str,
        report: &ResultReport,
        now: u64,
    ) -> Result<(), StateError> {
        let err = |source| StateError::RecordResult {
            job_id: job_id.to_owned(),
            source,
        };
        let result_json = serde_json::to_string(&report.result)
            .map_err(|e| err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        let logs_json = serde_json::to_string(&report.logs)
            .map_err(|e| err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        // Read before the transaction. Provenance the inventory cannot read does not cost the
        // job its result: it is recorded, and the job is counted as unindexed, which every
        // inventory answer reports, so no answer silently misses it.
        let statements = match report.provenance.as_deref().map(crate::inventory::read) {
            Some(Ok(s)) => Some(s),
            Some(Err(reason)) => {
                // The reason can quote the provenance, which quotes names a job chose.
                let reason = bulwark_protocol::terminal::escape(&reason);
                tracing::warn!(%job_id, %reason, "a result's provenance cannot be indexed");
                None
            }
            None => Some(Vec::new()),
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let row: Option<(String, Option<String>, Option<i64>)> = tx
            .query_row(
                "SELECT state, runner_id, lease_expires_at FROM jobs WHERE id = ?1",
                [job_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(err)?;
        let Some((state, holder, expires_at)) = row else {
            return Err(StateError::NotLeasedToRunner {
                job_id: job_id.to_owned(),
                runner_id: runner_id.to_owned(),
            });
        };
        if holder.as_deref() != Some(runner_id) {
            return Err(StateError::NotLeasedToRunner {
                job_id: job_id.to_owned(),
                runner_id: runner_id.to_owned(),
            });
        }
        match parse_state(&state) {
            Some(JobState::Leased) => {}
            Some(JobState::Finished) => {
                return Err(StateError::AlreadyFinished {
                    job_id: job_id.to_owned(),
                })
            }
            Some(JobState::Lost) => {
                return Err(StateError::LeaseExpired {
                    job_id: job_id.to_owned(),
                })
            }
            Some(JobState::Queued) | None => {
                return Err(StateError::NotLeasedToRunner {
                    job_id: job_id.to_owned(),
                    runner_id: runner_id.to_owned(),
                })
            }
        }
        if expires_at.is_none_or(|e| now >= to_u64(e)) {
            tx.execute("UPDATE jobs SET state = 'lost' WHERE id = ?1", [job_id])
                .map_err(err)?;
            tx.commit().map_err(err)?;
            return Err(StateError::LeaseExpired {
                job_id: job_id.to_owned(),
            });
        }
        tx.execute(
            "UPDATE jobs SET state = 'finished', finished_at = ?1, result = ?2, provenance = ?3,
                             logs = ?4
             WHERE id = ?5",
            params![
                to_i64(now),
                result_json,
                report.provenance,
                logs_json,
                job_id
            ],
        )
        .map_err(err)?;
        index_job(&tx, job_id, statements.as_deref()).map_err(err)?;
        tx.commit().map_err(err)
    }

    /// The finished jobs whose provenance names `digest` (any algorithm's value, lowercase
    /// hex), whose source is a commit starting with `prefix`, and which have a dependency of
    /// the uri `uri` (`(uri, true)`: starting with it), whichever are given (at least one),
    /// newest first, at most `limit`, each handed to `each` as it is read (`false` from it:
    /// stop). [`crate::inventory::hits`] then says which of their artifacts match.
    pub fn inventory_jobs(
        &self,
        digest: Option<&str>,
        prefix: Option<&str>,
        uri: Option<UriPattern<'_>>,
        limit: u32,
        mut each: impl FnMut(IndexedJob) -> bool,
    ) -> Result<(), StateError> {
        // Driven by the index: the digest's key, the commit prefix's range (hex digits sort
        // below 'g', so `c:<prefix>` up to `c:<prefix>g` is every commit starting with it),
        // the uri's key or its prefix's range (up to the prefix followed by the highest code
        // point), or those given intersected; then only the jobs found are read.
        const BY_DIGEST: &str = "SELECT job_id FROM inventory WHERE key = 'd:' || ?1";
        const BY_COMMIT: &str =
            "SELECT job_id FROM inventory WHERE key >= 'c:' || ?2 AND key < 'c:' || ?2 || 'g'";
        const BY_URI: &str = "SELECT job_id FROM inventory WHERE key = 'u:' || ?3";
        const BY_URI_PREFIX: &str = "SELECT job_id FROM inventory
             WHERE key >= 'u:' || ?3 AND key < 'u:' || ?3 || char(1114111)";
        let mut parts = Vec::new();
        if digest.is_some() {
            parts.push(BY_DIGEST);
        }
        if prefix.is_some() {
            parts.push(BY_COMMIT);
        }
        match uri {
            Some(UriPattern::Exact(_)) => parts.push(BY_URI),
            Some(UriPattern::Prefix(_)) => parts.push(BY_URI_PREFIX),
            None => {}
        }
        if parts.is_empty() {
            return Ok(());
        }
        // INTERSECT yields distinct rows; a single range may name a job more than once.
        let matching = match parts.as_slice() {
            [one] => format!("SELECT DISTINCT job_id FROM ({one})"),
            many => many.join(" INTERSECT "),
        };
        // The newest `limit` are chosen by id and time alone; only those jobs' provenance is
        // read (sorting whole rows would carry every matched job's provenance).
        let sql = format!(
            "SELECT j.id, j.name, j.trust, j.runner_id, j.provenance
             FROM (SELECT j2.id, j2.finished_at
                   FROM ({matching}) m CROSS JOIN jobs j2 ON j2.id = m.job_id
                   WHERE j2.state = 'finished'
                   ORDER BY j2.finished_at DESC, j2.id
                   LIMIT ?4) t
             CROSS JOIN jobs j ON j.id = t.id
             ORDER BY t.finished_at DESC, t.id"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(StateError::Inventory)?;
        let mut rows = stmt
            .query(params![digest, prefix, uri.map(UriPattern::text), limit])
            .map_err(StateError::Inventory)?;
        while let Some(r) = rows.next().map_err(StateError::Inventory)? {
            let job = IndexedJob {
                id: r.get(0).map_err(StateError::Inventory)?,
                name: r.get(1).map_err(StateError::Inventory)?,
                trust: r.get(2).map_err(StateError::Inventory)?,
                runner_id: r.get(3).map_err(StateError::Inventory)?,
                provenance: r.get(4).map_err(StateError::Inventory)?,
            };
            if !each(job) {
                break;
            }
        }
        Ok(())
    }

    /// What the metrics read from the database at `now` ([`crate::metrics`]): each count an
    /// index range of the jobs in that state (never a scan of finished jobs), and the runners.
    /// A leased job whose lease ran out counts as lost (as the next write would record it).
    pub fn metrics_snapshot(&self, now: u64) -> Result<crate::metrics::Snapshot, StateError> {
        let err = StateError::Metrics;
        let count = |sql: &str, p: &[&dyn rusqlite::ToSql]| {
            self.conn
                .query_row(sql, p, |r| r.get::<_, i64>(0))
                .map(to_u64)
                .map_err(err)
        };
        let now_i = to_i64(now);
        let queued = count("SELECT COUNT(*) FROM jobs WHERE state = 'queued'", &[])?;
        let leased = count(
            "SELECT COUNT(*) FROM jobs WHERE state = 'leased' AND lease_expires_at > ?1",
            &[&now_i],
        )?;
        let lost = count("SELECT COUNT(*) FROM jobs WHERE state = 'lost'", &[])?
            + count(
                "SELECT COUNT(*) FROM jobs WHERE state = 'leased' AND lease_expires_at <= ?1",
                &[&now_i],
            )?;
        let oldest_queued_at = self
            .conn
            .query_row(
                "SELECT MIN(submitted_at) FROM jobs WHERE state = 'queued'",
                [],
                |r| r.get::<_, Option<i64>>(0),
            )
            .map_err(err)?
            .map(to_u64);
        let mut active_runners = Vec::new();
        let mut removed_runners = 0;
        for r in self.runners()? {
            if r.removed_at.is_some() {
                removed_runners += 1;
            } else {
                active_runners.push((r.id, r.name));
            }
        }
        Ok(crate::metrics::Snapshot {
            queued,
            leased,
            lost,
            oldest_queued_at,
            active_runners,
            removed_runners,
        })
    }

    /// How many finished jobs reported provenance the inventory could not read (so no
    /// inventory answer covers them).
    pub fn unindexed_jobs(&self) -> Result<u64, StateError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM inventory WHERE key = ?1",
                [crate::inventory::UNINDEXED],
                |r| r.get::<_, i64>(0),
            )
            .map(to_u64)
            .map_err(StateError::Inventory)
    }
}

/// A finished job an inventory query reads.
#[derive(Debug, Clone)]
pub struct IndexedJob {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The trust level the submitter gave.
    pub trust: String,
    /// The runner it ran on.
    pub runner_id: Option<String>,
    /// Its provenance as reported.
    pub provenance: Option<String>,
}

/// Records what `statements` name for `job_id` in the inventory; `None`: its provenance could
/// not be read, and the job is recorded as unindexed.
fn index_job(
    conn: &Connection,
    job_id: &str,
    statements: Option<&[crate::inventory::Statement]>,
) -> rusqlite::Result<()> {
    let mut insert =
        conn.prepare_cached("INSERT OR IGNORE INTO inventory (key, job_id) VALUES (?1, ?2)")?;
    match statements {
        Some(statements) => {
            for key in crate::inventory::keys(statements) {
                insert.execute(params![key, job_id])?;
            }
        }
        None => {
            insert.execute(params![crate::inventory::UNINDEXED, job_id])?;
        }
    }
    Ok(())
}

/// Records every lease that ran out by `now` without a result as lost.
fn record_lost_leases(conn: &Connection, now: u64) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE jobs SET state = 'lost' WHERE state = 'leased' AND lease_expires_at <= ?1",
        [to_i64(now)],
    )
}

fn runner_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Runner> {
    Ok(Runner {
        id: r.get(0)?,
        name: r.get(1)?,
        public_key: r.get(2)?,
        registered_at: to_u64(r.get(3)?),
        removed_at: r.get::<_, Option<i64>>(4)?.map(to_u64),
    })
}

/// Finishes queued job `job_id`, whose stored `column` does not parse, as refused: it was
/// never run, and the submitter is told to submit it again.
fn refuse_unreadable(
    conn: &Connection,
    job_id: &str,
    column: &str,
    now: u64,
) -> rusqlite::Result<()> {
    let (name, trust): (String, String) = conn.query_row(
        "SELECT name, trust FROM jobs WHERE id = ?1",
        [job_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    tracing::warn!(
        job_id,
        column,
        "a queued job's stored record does not parse: finished as refused"
    );
    let trust = parse_trust(&trust).unwrap_or(Trust::Untrusted);
    let result = refused_result(
        trust,
        &name,
        &format!(
            "the coordinator cannot read this job's stored {column} (written by another \
             version of the coordinator, or edited): it never ran; submit it again"
        ),
    );
    // What else could not be read is set to what the record now says (a trust level, no
    // logs or provenance), so that the list of jobs reads it; an unreadable spec stays as
    // stored, for the operator to look at (the job's record then answers that it does not
    // parse).
    conn.execute(
        "UPDATE jobs SET state = 'finished', finished_at = ?2, result = ?3, trust = ?4,
                logs = NULL, provenance = NULL
         WHERE id = ?1 AND state = 'queued'",
        params![job_id, to_i64(now), result, trust.as_str()],
    )?;
    Ok(())
}

/// The result of a job the coordinator finished as refused, without a runner: the shape a
/// runner's synthetic result has (`status`, `reason`, `trust`, `job`).
fn refused_result(trust: Trust, name: &str, reason: &str) -> String {
    serde_json::json!({
        "status": "refused",
        "reason": reason,
        "trust": trust.as_str(),
        "job": name,
    })
    .to_string()
}

fn read_job(conn: &Connection, job_id: &str) -> Result<Option<Job>, StateError> {
    type Row = (
        String,
        String,
        String,
        String,
        Option<String>,
        i64,
        Option<i64>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<i64>,
    );
    let row: Option<Row> = conn
        .query_row(
            "SELECT name, trust, spec, state, runner_id, submitted_at, lease_expires_at, result,
                    provenance, logs, cancel_requested_at
             FROM jobs WHERE id = ?1",
            [job_id],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                    r.get(10)?,
                ))
            },
        )
        .optional()
        .map_err(|source| StateError::ReadJob {
            job_id: job_id.to_owned(),
            source,
        })?;
    let Some((
        name,
        trust,
        spec,
        state,
        runner_id,
        submitted_at,
        lease_expires_at,
        result,
        provenance,
        logs,
        cancel_requested_at,
    )) = row
    else {
        return Ok(None);
    };
    let corrupt = |column| StateError::CorruptJob {
        job_id: job_id.to_owned(),
        column,
    };
    let result = match result {
        Some(text) => Some(ResultReport {
            result: serde_json::from_str(&text).map_err(|_| corrupt("result"))?,
            provenance,
            logs: match logs {
                Some(logs) => serde_json::from_str(&logs).map_err(|_| corrupt("logs"))?,
                None => Vec::new(),
            },
        }),
        None => None,
    };
    Ok(Some(Job {
        id: job_id.to_owned(),
        name,
        trust: parse_trust(&trust).ok_or_else(|| corrupt("trust"))?,
        spec: serde_json::from_str(&spec).map_err(|_| corrupt("spec"))?,
        state: parse_state(&state).ok_or_else(|| corrupt("state"))?,
        runner_id,
        submitted_at: to_u64(submitted_at),
        lease_expires_at: lease_expires_at.map(to_u64),
        cancel_requested_at: cancel_requested_at.map(to_u64),
        result,
    }))
}

#[cfg(test)]
pub(crate) mod tests;
