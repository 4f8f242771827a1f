//! Who may ask: the operator's admin token, registration tokens, and signed runner requests.
//!
//! - The **admin token** (`admin.token`, `bwadm_` + 32 random bytes) is a bearer secret: the
//!   operator and the CI glue hold it, and it never leaves the coordinator's side of the
//!   network. It is compared in constant time, through the sha256 of both sides so that the
//!   comparison does not even reveal the length.
//! - A **registration token** is stored only as its sha256: a copy of the database registers
//!   nothing.
//! - Every **runner request** is signed (docs/control-plane.md, "Signed requests"): the
//!   signature covers [`signing_input`], and the request is refused unless the runner is
//!   registered and not removed, its timestamp is within [`MAX_CLOCK_SKEW_SECS`] of when its
//!   head arrived ([`RequestTime`]), its nonce is new, and the signature verifies with the
//!   runner's registered key. The signature is checked before the nonce is recorded, so
//!   someone without the key cannot burn a runner's nonces.
//!   A request naming its body's sha256 in [`headers::CONTENT_SHA256`] has its signature
//!   checked before the body is read ([`check_before_body`]), and its body then held to that
//!   digest ([`check_body_digest`]).
//!   All refusals are `401` with a message that names what was wrong and never quotes the
//!   signature.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use base64::Engine;
use bulwark_protocol::control::{headers, signing_input, MAX_CLOCK_SKEW_SECS};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::keys;
use crate::state::{Db, Runner, StateError};
use p256::ecdsa::VerifyingKey;

/// The prefix of the admin token.
pub const ADMIN_TOKEN_PREFIX: &str = "bwadm_";

/// Shortest admin token accepted from `admin.token` (ours are 49 characters).
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

/// How much longer than the clock-skew window a nonce is remembered: more than any request
/// is judged before its nonce reaches the database, that is [`MAX_REQUEST_AGE_SECS`] and its
/// wait for the database lock (see [`verify_signed_request_for_digest`]).
pub const NONCE_GRACE_SECS: u64 = MAX_CLOCK_SKEW_SECS;

/// The most a request's timestamp is judged before its full check, in seconds: a request is
/// judged by when its head arrived ([`RequestTime`]), but never by a moment longer ago than
/// this. Longer than a request may take from its head to its full check (a large body: 20 s
/// waiting for room in the body budget, 15 s, then its length at the minimum rate, 163 s for
/// the largest), and shorter than [`NONCE_GRACE_SECS`], leaving the rest for the wait for the
/// database lock: a nonce must still be remembered when a replay of it, judged by its own
/// arrival, is checked.
pub const MAX_REQUEST_AGE_SECS: u64 = 180;

const _: () = assert!(MAX_REQUEST_AGE_SECS < NONCE_GRACE_SECS);

/// When a signed request is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTime {
    /// When its head arrived (seconds since the epoch). Its timestamp is judged against this:
    /// the time its body then took (a wait for room to read it, a slow link, up to the
    /// request deadline) does not count against the runner's clock, and a runner whose clock
    /// passed the check before its body is not refused after it.
    pub arrived: u64,
    /// When its full check runs: how long its nonce is remembered, and which nonces are old
    /// enough to forget, go by this.
    pub now: u64,
}

impl RequestTime {
    /// A request checked at `now`, when its head arrived.
    pub fn at(now: u64) -> RequestTime {
        RequestTime { arrived: now, now }
    }

    /// The moment the timestamp is judged against: the arrival, but not earlier than
    /// [`MAX_REQUEST_AGE_SECS`] before now (nor later than now, should the clock have been
    /// stepped back).
    fn judged_at(self) -> u64 {
        self.arrived
            .clamp(self.now.saturating_sub(MAX_REQUEST_AGE_SECS), self.now)
    }
}

/// Shortest nonce accepted, in characters.
pub const MIN_NONCE_LEN: usize = 16;
/// Longest nonce accepted, in characters.
pub const MAX_NONCE_LEN: usize = 64;

/// Longest runner id accepted in a header (ours are 39 characters).
const MAX_RUNNER_ID_LEN: usize = 128;

/// Largest base64 signature header accepted (a DER P-256 signature is at most 72 bytes).
const MAX_SIGNATURE_LEN: usize = 256;

/// Why a request was not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The system random source failed.
    #[error("generating a token: the system random source failed")]
    Random,
    /// No or a wrong admin token.
    #[error("admin token missing or not valid (send `Authorization: Bearer <admin.token>`)")]
    Admin,
    /// A signing header is absent or not text.
    #[error("signed request refused: header {name} missing or not valid")]
    MissingHeader {
        /// The header.
        name: &'static str,
    },
    /// `admin.token` holds too little to be a secret (truncated, or emptied by mistake).
    #[error("admin.token: refused: it holds {len} characters, fewer than {MIN_ADMIN_TOKEN_LEN}; a truncated token would let a guessable bearer in")]
    AdminTokenTooShort {
        /// Its length, whitespace trimmed.
        len: usize,
    },
    /// The timestamp is not an integer.
    #[error(
        "signed request refused: header {} is not seconds since the epoch",
        headers::TIMESTAMP
    )]
    Timestamp,
    /// The timestamp is too far from the coordinator's clock.
    #[error("signed request refused: timestamp {timestamp} is {skew} s from the coordinator's clock (at most {MAX_CLOCK_SKEW_SECS} s); check the runner's clock")]
    ClockSkew {
        /// The request's timestamp.
        timestamp: u64,
        /// Its distance from now.
        skew: u64,
    },
    /// The nonce is too short, too long, or not base64url.
    #[error("signed request refused: the nonce must be {MIN_NONCE_LEN} to {MAX_NONCE_LEN} base64url characters")]
    Nonce,
    /// The request target has a query or a percent escape: what the handlers act on (the
    /// decoded path, no query) would not be the bytes that were signed.
    #[error("signed request refused: the request target has a query or percent escape; runner requests use plain paths")]
    Target,
    /// The runner is unknown or removed.
    #[error("signed request refused: runner {runner_id} is unknown or removed")]
    UnknownRunner {
        /// The runner id the request named.
        runner_id: String,
    },
    /// A lease, or a request that may carry a large body, came without
    /// [`headers::CONTENT_SHA256`]: a large body's signature cannot be checked before the body
    /// is read, and the body is not read unauthenticated; a runner that sends no digest is
    /// refused its lease so that it takes no job whose result would be refused. Sent by a
    /// runner older than the coordinator.
    #[error(
        "signed request refused: header {} missing: this coordinator requires it to lease a \
         job and to report one (it checks a large body's signature before reading the body, \
         against the body's sha256 in that header); upgrade bulwark on the runner (runners \
         first, then the coordinator)",
        headers::CONTENT_SHA256
    )]
    BodyDigestMissing,
    /// The body does not hash to the digest [`headers::CONTENT_SHA256`] named.
    #[error(
        "signed request refused: the body does not hash to header {} (altered on the way?)",
        headers::CONTENT_SHA256
    )]
    BodyDigest,
    /// The signature does not verify (wrong key, tampered request or body).
    #[error("signed request refused: the signature does not verify for runner {runner_id}")]
    Signature {
        /// The runner id the request named.
        runner_id: String,
    },
    /// The stored key of the runner does not parse.
    #[error("runner {runner_id}: its stored public key does not parse")]
    StoredKey {
        /// The runner.
        runner_id: String,
    },
    /// The state refused (replay, runner removed meanwhile) or failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// The admin token. Its `Debug` redacts it.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// Makes the text of a new admin token.
    pub fn generate() -> Result<Zeroizing<String>, AuthError> {
        random_token(ADMIN_TOKEN_PREFIX)
    }

    /// The token whose text is `text` (surrounding whitespace ignored, as a file has a newline).
    /// Refuses fewer than [`MIN_ADMIN_TOKEN_LEN`] characters: an emptied `admin.token` must not
    /// make `Authorization: Bearer ` an admin.
    pub fn from_text(text: &str) -> Result<AdminToken, AuthError> {
        let text = text.trim();
        if text.len() < MIN_ADMIN_TOKEN_LEN {
            return Err(AuthError::AdminTokenTooShort { len: text.len() });
        }
        Ok(AdminToken {
            digest: Sha256::digest(text.as_bytes()).into(),
        })
    }

    /// Checks an `Authorization` header value: `Bearer <token>`, compared in constant time.
    pub fn check_authorization(&self, header: Option<&str>) -> Result<(), AuthError> {
        let presented = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or(AuthError::Admin)?;
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        if bool::from(digest.ct_eq(&self.digest)) {
            Ok(())
        } else {
            Err(AuthError::Admin)
        }
    }
}

/// A new registration token's text (`bwreg_` + 32 random bytes, base64url).
pub fn generate_registration_token() -> Result<Zeroizing<String>, AuthError> {
    random_token(bulwark_protocol::control::REGISTRATION_TOKEN_PREFIX)
}

/// The lowercase hex sha256 of `text`: how tokens are stored.
pub fn sha256_hex(text: &[u8]) -> String {
    hex(&Sha256::digest(text))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// `n` random bytes.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|_| AuthError::Random)?;
    Ok(bytes)
}

fn random_token(prefix: &str) -> Result<Zeroizing<String>, AuthError> {
    let bytes = Zeroizing::new(random_bytes::<32>()?);
    let mut text = Zeroizing::new(String::from(prefix));
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(bytes.as_slice(), &mut text);
    Ok(text)
}

/// The four signing headers of a runner request, as received.
#[derive(Debug, Clone)]
pub struct SignedHeaders {
    /// [`headers::RUNNER`].
    pub runner_id: String,
    /// [`headers::TIMESTAMP`], unparsed.
    pub timestamp: String,
    /// [`headers::NONCE`].
    pub nonce: String,
    /// [`headers::SIGNATURE`], base64.
    pub signature: String,
}

impl SignedHeaders {
    /// Reads the headers from `get` (a header lookup); each must be present and text.
    pub fn read<'a>(get: impl Fn(&'static str) -> Option<&'a str>) -> Result<Self, AuthError> {
        let take = |name: &'static str, max: usize| {
            get(name)
                .filter(|v| !v.is_empty() && v.len() <= max)
                .map(str::to_owned)
                .ok_or(AuthError::MissingHeader { name })
        };
        Ok(SignedHeaders {
            runner_id: take(headers::RUNNER, MAX_RUNNER_ID_LEN)?,
            timestamp: take(headers::TIMESTAMP, 20)?,
            nonce: take(headers::NONCE, MAX_NONCE_LEN)?,
            signature: take(headers::SIGNATURE, MAX_SIGNATURE_LEN)?,
        })
    }
}

/// The body digest a signed request names in [`headers::CONTENT_SHA256`]: `None` when it
/// names none; refused unless it is 64 lowercase hex characters (what `sha256_hex` makes).
pub fn read_body_digest<'a>(
    get: impl Fn(&'static str) -> Option<&'a str>,
) -> Result<Option<String>, AuthError> {
    let Some(value) = get(headers::CONTENT_SHA256) else {
        return Ok(None);
    };
    let hex = value.len() == 64
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex {
        return Err(AuthError::MissingHeader {
            name: headers::CONTENT_SHA256,
        });
    }
    Ok(Some(value.to_owned()))
}

/// The sha256 of `body` (lowercase hex), refused when the request named another in
/// [`headers::CONTENT_SHA256`] (`claimed`): the digest its signature is then checked against.
pub fn check_body_digest(claimed: Option<&str>, body: &[u8]) -> Result<String, AuthError> {
    let digest = sha256_hex(body);
    match claimed {
        Some(c) if c != digest => Err(AuthError::BodyDigest),
        _ => Ok(digest),
    }
}

/// The public keys of runners seen active, parsed once: a signature is checked against one
/// without the database (and its lock). Only keys of active runners are added. Whether the
/// runner is still active, and whether the key checked is still its key (a runner re-keys,
/// `POST /v1/runners/rekey`), is asked of the database again, under its lock, with the nonce.
#[derive(Debug, Default)]
pub struct RunnerKeys(Mutex<HashMap<String, (String, VerifyingKey)>>);

impl RunnerKeys {
    /// `runner_id`'s key and the PEM it was parsed from, read from `db` (locked only for that)
    /// the first time.
    ///
    /// The key is cached while the database is still locked, and [`RunnerKeys::forget`] is
    /// called with it locked too: a key read just before a rekey cannot be cached after the
    /// rekey dropped it (requests signed with the new key would then fail against the stale
    /// key until a restart).
    fn get(&self, db: &Mutex<Db>, runner_id: &str) -> Result<(String, VerifyingKey), AuthError> {
        let cached = self.lock().get(runner_id).cloned();
        if let Some(key) = cached {
            return Ok(key);
        }
        let db = lock(db);
        let runner = db
            .active_runner(runner_id)?
            .ok_or_else(|| AuthError::UnknownRunner {
                runner_id: runner_id.to_owned(),
            })?;
        let key = keys::parse_public_key(&runner.public_key).map_err(|_| AuthError::StoredKey {
            runner_id: runner_id.to_owned(),
        })?;
        let entry = (runner.public_key, key);
        self.lock().insert(runner_id.to_owned(), entry.clone());
        drop(db);
        Ok(entry)
    }

    /// Drops `runner_id`'s cached key (removed, or re-keyed); called with the database locked
    /// (see [`RunnerKeys::get`]).
    pub fn forget(&self, runner_id: &str) {
        self.lock().remove(runner_id);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, (String, VerifyingKey)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The database, locked. A panic while holding the lock leaves SQLite consistent (the
/// transaction rolls back when dropped), so a poisoned lock is still usable.
pub fn lock(db: &Mutex<Db>) -> MutexGuard<'_, Db> {
    db.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a signed request must pass before its body is read (docs/control-plane.md, "Request
/// bodies"): the checks of [`verify_signed_request_for_digest`] that can be made before the
/// body, in its order, so a request refused here gets the refusal the full check would give.
///
/// The target, the timestamp's window, the nonce's shape, and that the runner is registered
/// and active (read from the database, its lock taken, the first time a runner is seen: call
/// it off the event loop); and when the request names its body's digest (`body_sha256_hex`,
/// [`headers::CONTENT_SHA256`]), the signature over that digest and that the nonce was not
/// used already. The nonce is not recorded here: the full check, which still runs once the
/// body is read, holds the body to the digest ([`check_body_digest`]), checks the signature
/// again, and records the nonce with the runner's standing under the lock.
///
/// A runner seen active once and removed since by another process (`runners remove`) passes
/// here until the full check has refused it once. `now` is when the request's head arrived,
/// the time the full check judges its timestamp against too ([`RequestTime::arrived`]).
pub fn check_before_body(
    db: &Mutex<Db>,
    keys: &RunnerKeys,
    method: &str,
    path_and_query: &str,
    signed: &SignedHeaders,
    body_sha256_hex: Option<&str>,
    now: u64,
) -> Result<(), AuthError> {
    match body_sha256_hex {
        Some(digest) => {
            check_signature(db, keys, method, path_and_query, signed, digest, now)?;
            // A copy of a request already served (its headers taken from a log) is refused
            // as the full check would, without its body; one sent while the original is
            // still in flight passes here and is refused there.
            if lock(db).nonce_used(&signed.runner_id, &signed.nonce)? {
                return Err(StateError::NonceReused.into());
            }
            Ok(())
        }
        None => {
            check_unsigned_parts(path_and_query, signed, now)?;
            keys.get(db, &signed.runner_id).map(drop)
        }
    }
}

/// The checks that need neither the body nor the database: the target, the timestamp (its
/// value returned) and the nonce's shape.
fn check_unsigned_parts(
    path_and_query: &str,
    signed: &SignedHeaders,
    now: u64,
) -> Result<u64, AuthError> {
    // The signature covers the target as sent, but the routes act on the percent-decoded path
    // and ignore any query: only targets where the two are the same bytes are accepted.
    if path_and_query.contains(['?', '%']) {
        return Err(AuthError::Target);
    }
    let timestamp: u64 = signed.timestamp.parse().map_err(|_| AuthError::Timestamp)?;
    let skew = now.abs_diff(timestamp);
    if skew > MAX_CLOCK_SKEW_SECS {
        return Err(AuthError::ClockSkew { timestamp, skew });
    }
    let nonce_ok = (MIN_NONCE_LEN..=MAX_NONCE_LEN).contains(&signed.nonce.len())
        && signed
            .nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !nonce_ok {
        return Err(AuthError::Nonce);
    }
    Ok(timestamp)
}

/// Authenticates a signed runner request: `method` and `path_and_query` as sent, its
/// headers and body, at time `now`. Returns the runner, with the nonce recorded, and the
/// database still locked for the request's own work. A target with a query or a percent
/// escape is refused (see [`AuthError::Target`]). The API uses
/// [`verify_signed_request_for_digest`] with the digest its intake computed; this form is
/// for the tests.
#[cfg(test)]
pub fn verify_signed_request<'a>(
    db: &'a Mutex<Db>,
    keys: &RunnerKeys,
    method: &str,
    path_and_query: &str,
    signed: &SignedHeaders,
    body: &[u8],
    now: u64,
) -> Result<(Runner, MutexGuard<'a, Db>), AuthError> {
    let digest = sha256_hex(body);
    verify_signed_request_for_digest(
        db,
        keys,
        method,
        path_and_query,
        signed,
        &digest,
        RequestTime::at(now),
    )
}

/// [`verify_signed_request`] for a body not read yet: the signature is checked against
/// `body_sha256_hex`, the hash the caller will hold the body to (an upload names it in its
/// path, and is refused unless its bytes hash to it).
///
/// The signature is checked without the database lock (it takes a third of a millisecond
/// here, longer than the request's own database work): many requests are checked side by
/// side, and a flood of forged ones does not hold up the rest. The lock is taken for the key
/// the first time a runner is seen, and then for the nonce and what follows.
///
/// The timestamp is judged against when the request's head arrived (`at`, see
/// [`RequestTime`]), the nonce kept and old nonces forgotten by `at.now`.
pub fn verify_signed_request_for_digest<'a>(
    db: &'a Mutex<Db>,
    keys: &RunnerKeys,
    method: &str,
    path_and_query: &str,
    signed: &SignedHeaders,
    body_sha256_hex: &str,
    at: RequestTime,
) -> Result<(Runner, MutexGuard<'a, Db>), AuthError> {
    let now = at.now;
    let (timestamp, pem) = check_signature(
        db,
        keys,
        method,
        path_and_query,
        signed,
        body_sha256_hex,
        at.judged_at(),
    )?;
    let runner_id = &signed.runner_id;
    let bad_signature = || AuthError::Signature {
        runner_id: runner_id.clone(),
    };
    let mut guard = lock(db);
    let unknown = || AuthError::UnknownRunner {
        runner_id: runner_id.clone(),
    };
    // Removed since its key was read (perhaps by the operator's command, another process).
    let Some(runner) = guard.active_runner(runner_id)? else {
        keys.forget(runner_id);
        return Err(unknown());
    };
    // The key checked must be the one recorded now: the runner may have re-keyed since its
    // key was cached (by a request checked at the same time as this one, say).
    if runner.public_key != pem {
        keys.forget(runner_id);
        return Err(bad_signature());
    }
    // Kept until no timestamp it could be sent with is accepted any more, and as long again.
    // A replay is judged by its own arrival, at most MAX_REQUEST_AGE_SECS before its `now`,
    // and that `now` was read before it waited for the lock: a replay accepted at the edge of
    // the window reaches the insert up to MAX_REQUEST_AGE_SECS and a lock wait after that
    // edge, and the original's record must still be there, not pruned by a later request.
    let keep_until = timestamp
        .max(now)
        .saturating_add(MAX_CLOCK_SKEW_SECS)
        .saturating_add(NONCE_GRACE_SECS);
    match guard.use_nonce(runner_id, &signed.nonce, keep_until, now) {
        Ok(()) => Ok((runner, guard)),
        Err(StateError::RunnerNotActive { .. }) => Err(unknown()),
        Err(e) => Err(e.into()),
    }
}

/// The checks of [`verify_signed_request_for_digest`] up to the signature: the unsigned
/// parts (the timestamp judged against `now`), the runner's cached key (read from the
/// database the first time), and the signature over `body_sha256_hex`. Returns the timestamp
/// and the PEM of the key that verified.
fn check_signature(
    db: &Mutex<Db>,
    keys: &RunnerKeys,
    method: &str,
    path_and_query: &str,
    signed: &SignedHeaders,
    body_sha256_hex: &str,
    now: u64,
) -> Result<(u64, String), AuthError> {
    let timestamp = check_unsigned_parts(path_and_query, signed, now)?;
    let runner_id = &signed.runner_id;
    let (pem, key) = keys.get(db, runner_id)?;
    let bad_signature = || AuthError::Signature {
        runner_id: runner_id.clone(),
    };
    let message = signing_input(
        method,
        path_and_query,
        timestamp,
        &signed.nonce,
        runner_id,
        body_sha256_hex,
    )
    .ok_or_else(bad_signature)?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signed.signature.trim())
        .map_err(|_| bad_signature())?;
    if !keys::verify_der(&key, &message, &signature) {
        return Err(bad_signature());
    }
    Ok((timestamp, pem))
}

#[cfg(test)]
pub(crate) mod tests;
