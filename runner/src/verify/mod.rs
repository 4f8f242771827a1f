//! `bulwark verify`: decides whether artifacts may be trusted, from their signed provenance and
//! an operator's policy, and says exactly why when they may not.
//!
//! The order of the checks is the point of this module:
//!
//! 1. **Signature before parsing.** The DSSE signature is checked over the PAE of the payload
//!    type and the exact payload bytes, with keys the operator named (`--key`), before a byte of
//!    the payload is interpreted. Nothing unverified can steer the verifier: not the key id or
//!    the bundle's key hint (a key id only picks which trusted key to try, and one naming no
//!    trusted key is not tried: see [`dsse`]), not the statement. The checks a file may cost
//!    are bounded ([`dsse::Checker`]): past a budget of failed signatures it is refused whole.
//!    The payload type is part of what is signed and must be `application/vnd.in-toto+json`,
//!    so a signature our key made over some other kind of document is never read as provenance.
//!
//!    Before that, the file is read into the envelope and bundle types directly, never into a
//!    tree of JSON values: unknown fields are refused by name without parsing their values and
//!    a field given twice is refused, so memory stays near the file's size whatever it holds.
//!    A bundle is accepted only as Bulwark writes it (a public key, no certificate, log entry
//!    or timestamp: evidence this verifier does not check must not look checked).
//! 2. **Parse exactly the verified bytes.** The bytes [`dsse::verify`] returns are the bytes
//!    parsed, once, into the one value every later check reads; the envelope is never decoded a
//!    second time. Duplicate object keys are refused (see [`StrictValue`]): JSON parsers
//!    disagree on which of two `"_type"` keys wins, and a signed document that means different
//!    things to different verifiers is not evidence.
//! 3. **Say what it is before reading it.** `_type` must be in-toto Statement v1 (a v0.1
//!    statement is refused by name: its subject and predicate rules differ), `predicateType`
//!    SLSA Provenance v1, `buildType` ours, because the policy reads fields whose meaning only
//!    `docs/build-type.md` defines.
//! 4. **The artifact, by content.** Each artifact is hashed (streamed, sha256) and must equal
//!    a subject's digest; a file name proves nothing.
//! 5. **The policy** ([`policy`]), against every statement that names the artifact.
//!
//! Every rejection names its check and the values it saw (`builder_ids: runDetails.builder.id
//! is "…", not one of […]`), because the operator's next step depends on which check failed.
//! Input that cannot be read at all (a missing file, a bad PEM key, a provenance file that is
//! not envelopes, a policy with an unknown key) is not a rejection but a usage error, exit 2,
//! naming the file: a typo in a policy must not look like a bad artifact, nor pass.
//!
//! Alternatives rejected: `slsa-verifier` and `cosign verify-blob-attestation` verify the
//! envelope and the subject but not Bulwark's isolation, trust and tool-pinning fields, and
//! would make a deploy gate depend on a Go toolchain; the `sigstore` crate targets keyless
//! verification with Fulcio and Rekor, which these key-signed bundles do not use.

pub mod policy;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bulwark_protocol::terminal::escape;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::provenance::bundle::ReadBundle;
use crate::provenance::dsse::{self, Envelope, VerifyError, IN_TOTO_PAYLOAD_TYPE};
use crate::provenance::keys::PublicKey;
use crate::provenance::statement::{Statement, BUILD_TYPE, SLSA_PROVENANCE_V1, STATEMENT_TYPE};

use self::policy::Policy;

/// `_type` of in-toto Statement v0.1, refused by name.
pub const STATEMENT_V0_1_TYPE: &str = "https://in-toto.io/Statement/v0.1";

/// Largest provenance file read (a statement lists every output; the runner bounds their count).
pub const MAX_PROVENANCE_BYTES: u64 = 64 << 20;

/// Exit statuses of `bulwark verify`.
pub mod exit {
    /// Every artifact accepted.
    pub const ACCEPTED: u8 = 0;
    /// At least one artifact rejected.
    pub const REJECTED: u8 = 1;
    /// Usage error or unreadable input.
    pub const USAGE: u8 = 2;
}

/// What `bulwark verify` was asked to do.
#[derive(Debug, Clone)]
pub struct Request {
    /// `.intoto.jsonl` or `.sigstore.json`.
    pub provenance: PathBuf,
    /// Trusted public keys (SPKI PEM).
    pub keys: Vec<PathBuf>,
    /// Policy file; without one, [`Policy::default`] applies.
    pub policy: Option<PathBuf>,
    /// Print a JSON array instead of lines.
    pub json: bool,
    /// Files to check.
    pub artifacts: Vec<PathBuf>,
}

/// Why one artifact is not accepted: the check that failed and what it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The check: `signature`, `payloadType`, `_type`, `subject`, a policy key, …
    pub check: &'static str,
    /// The values seen and wanted.
    pub details: String,
}

impl Rejection {
    /// A rejection by `check`.
    pub fn new(check: &'static str, details: impl Into<String>) -> Rejection {
        Rejection {
            check,
            details: details.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.check, self.details)
    }
}

/// Input that cannot be used at all (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// A `--key` file.
    #[error("{0:#}")]
    Key(anyhow::Error),
    /// The `--policy` file.
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    /// The `--provenance` file.
    #[error("provenance {}: {message}", path.display())]
    Provenance {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// An artifact.
    #[error("artifact {}: cannot read", path.display())]
    Artifact {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An artifact that is a directory, fifo, socket or device: nothing that can be shipped
    /// as the bytes verified.
    #[error("artifact {}: not a regular file ({kind})", path.display())]
    ArtifactKind {
        /// The file.
        path: PathBuf,
        /// `a directory`, `a fifo`, …
        kind: &'static str,
    },
}

impl InputError {
    /// What is wrong, without the file's name or the command's: for a caller that names the
    /// file itself (`inventory add`: `REFUSED <path>: <reason>`). Bounded as [`error_lines`]
    /// bounds a line; escaping is the printer's job.
    pub fn reason(&self) -> String {
        let text = match self {
            InputError::Provenance { message, .. } => message.clone(),
            other => other.to_string(),
        };
        let mut chars = text.chars();
        let head: String = chars.by_ref().take(MAX_ERROR_LINE_CHARS).collect();
        if chars.next().is_some() {
            format!("{head}…")
        } else {
            head
        }
    }
}

/// One artifact's outcome.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The artifact as given.
    pub artifact: PathBuf,
    /// Its sha256.
    pub sha256: String,
    /// The matching subject's name when accepted, or the rejection.
    pub outcome: Result<Option<String>, Rejection>,
}

/// Runs `bulwark verify`: prints one line (or JSON object) per artifact, returns the exit status.
pub fn run(req: &Request) -> u8 {
    match verify(req, SystemTime::now()) {
        Ok(verdicts) => {
            print_verdicts(&verdicts, req.json);
            if verdicts.iter().all(|v| v.outcome.is_ok()) {
                exit::ACCEPTED
            } else {
                exit::REJECTED
            }
        }
        Err(e) => {
            for line in error_lines(&e) {
                eprintln!("{line}");
            }
            exit::USAGE
        }
    }
}

/// Reads every input, then checks every artifact; `Err` only for unusable input.
pub fn verify(req: &Request, now: SystemTime) -> Result<Vec<Verdict>, InputError> {
    let keys = req
        .keys
        .iter()
        .map(|p| PublicKey::load(p).map_err(|e| InputError::Key(e.context("--key"))))
        .collect::<Result<Vec<_>, _>>()?;
    let policy = match &req.policy {
        Some(p) => Policy::load(p)?,
        None => Policy::default(),
    };
    let envelopes = load_provenance(&req.provenance)?;
    let digests = req
        .artifacts
        .iter()
        .map(|a| artifact_sha256(a))
        .collect::<Result<Vec<_>, _>>()?;

    // Every envelope must verify: one bad line taints the file, since whoever could replace
    // one line could have replaced the line that names this artifact.
    let total = envelopes.len();
    let mut statements = Vec::with_capacity(total);
    let mut failure = None;
    let mut checker = dsse::Checker::new(&keys);
    for (i, env) in envelopes.into_iter().enumerate() {
        let checked = env.and_then(|e| verify_signed_with(&mut checker, &e));
        if checker.over_budget() {
            // Not a verdict on an artifact: a file no signer wrote, refused before it costs more.
            return Err(InputError::Provenance {
                path: req.provenance.clone(),
                message: VerifyError::Budget.to_string(),
            });
        }
        match checked {
            Ok(s) => statements.push(s),
            Err(mut r) => {
                if total > 1 {
                    r.details = format!("envelope {} of {total}: {}", i + 1, r.details);
                }
                failure = Some(r);
                break;
            }
        }
    }

    Ok(req
        .artifacts
        .iter()
        .zip(digests)
        .map(|(artifact, sha256)| {
            let outcome = match &failure {
                Some(r) => Err(r.clone()),
                None => check_artifact(&sha256, &statements, &policy, now),
            };
            Verdict {
                artifact: artifact.clone(),
                sha256,
                outcome,
            }
        })
        .collect())
}

/// A verified statement and the key ids of the trusted keys that signed it.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The statement, parsed from exactly the verified bytes.
    pub statement: Statement,
    /// Key ids of the trusted keys whose signatures verified; never empty.
    pub signers: Vec<String>,
}

/// Signature, payload type, then the statement's declared types, in that order.
pub fn verify_envelope(env: &Envelope, keys: &[PublicKey]) -> Result<Statement, Rejection> {
    verify_signed(env, keys).map(|s| s.statement)
}

/// [`verify_envelope`], with which trusted keys signed.
pub fn verify_signed(env: &Envelope, keys: &[PublicKey]) -> Result<Signed, Rejection> {
    verify_signed_with(&mut dsse::Checker::new(keys), env)
}

/// [`verify_signed`] of one of a file's envelopes, with the file's checker: after an `Err`,
/// [`dsse::Checker::over_budget`] says whether the whole file is to be refused.
pub fn verify_signed_with(
    checker: &mut dsse::Checker<'_>,
    env: &Envelope,
) -> Result<Signed, Rejection> {
    let verified = checker
        .verify(env, IN_TOTO_PAYLOAD_TYPE)
        .map_err(|e| match e {
            VerifyError::PayloadType { found, expected } => Rejection::new(
                "payloadType",
                format!(
                    "{}, expected {expected:?}",
                    bulwark_protocol::error::quote(&found)
                ),
            ),
            e @ (VerifyError::NoValidSignature { .. } | VerifyError::Budget) => {
                Rejection::new("signature", e.to_string())
            }
            VerifyError::Malformed(m) => Rejection::new("signature", m),
        })?;
    let (payload, signers) = (verified.payload, verified.signers);
    // From here on only `payload`, the verified bytes, is read.
    let value = serde_json::from_slice::<StrictValue>(&payload)
        .map_err(|e| Rejection::new("statement", format!("the signed payload is not JSON: {e}")))?
        .0;
    let field = |name: &str| value.get(name).and_then(Value::as_str);
    match field("_type") {
        Some(STATEMENT_TYPE) => {}
        Some(STATEMENT_V0_1_TYPE) => {
            return Err(Rejection::new(
                "_type",
                format!(
                    "in-toto Statement v0.1 ({STATEMENT_V0_1_TYPE}) is not accepted; only \
                     Statement v1 ({STATEMENT_TYPE})"
                ),
            ))
        }
        other => {
            return Err(Rejection::new(
                "_type",
                format!("{}, expected {STATEMENT_TYPE:?}", shown(other)),
            ))
        }
    }
    if field("predicateType") != Some(SLSA_PROVENANCE_V1) {
        return Err(Rejection::new(
            "predicateType",
            format!(
                "{}, expected {SLSA_PROVENANCE_V1:?}",
                shown(field("predicateType"))
            ),
        ));
    }
    let build_type = value
        .pointer("/predicate/buildDefinition/buildType")
        .and_then(Value::as_str);
    if build_type != Some(BUILD_TYPE) {
        return Err(Rejection::new(
            "buildType",
            format!(
                "{}, expected {BUILD_TYPE:?} (the policy reads fields only that build type defines)",
                shown(build_type)
            ),
        ));
    }
    let statement = serde_json::from_value::<Statement>(value).map_err(|e| {
        Rejection::new(
            "statement",
            format!("not an SLSA Provenance v1 statement: {e}"),
        )
    })?;
    Ok(Signed { statement, signers })
}

fn check_artifact(
    sha256: &str,
    statements: &[Signed],
    policy: &Policy,
    now: SystemTime,
) -> Result<Option<String>, Rejection> {
    let mut subject_name = None;
    let mut matched = false;
    for signed in statements {
        let st = &signed.statement;
        let Some(subject) = st.subject.iter().find(|s| {
            s.digest
                .get("sha256")
                .is_some_and(|d| d.eq_ignore_ascii_case(sha256))
        }) else {
            continue;
        };
        // Every statement naming the artifact must pass: one that records a build the
        // policy forbids is evidence against it, whatever another statement says.
        policy.check(st, &signed.signers, now)?;
        if !matched {
            subject_name = subject.name.clone();
            matched = true;
        }
    }
    if !matched {
        let names: Vec<String> = statements
            .iter()
            .flat_map(|s| &s.statement.subject)
            .take(5)
            .map(|s| bulwark_protocol::error::quote(s.name.as_deref().unwrap_or("(unnamed)")))
            .collect();
        let count: usize = statements.iter().map(|s| s.statement.subject.len()).sum();
        let more = if count > names.len() { ", …" } else { "" };
        return Err(Rejection::new(
            "subject",
            format!(
                "sha256 {sha256} is not the digest of any of the {count} subjects ({}{more})",
                names.join(", ")
            ),
        ));
    }
    Ok(subject_name)
}

/// Reads the provenance file into envelopes; a per-envelope `Err` is a rejection (a bundle that
/// is readable but not acceptable), the outer `Err` unreadable input.
///
/// The format is decided by content, not by the file name: a file that is one JSON object with
/// a `mediaType` is a Sigstore bundle, one JSON object without it a single envelope, anything
/// else JSON Lines with one envelope per non-empty line.
pub fn load_provenance(path: &Path) -> Result<Vec<Result<Envelope, Rejection>>, InputError> {
    let bad = |message: String| InputError::Provenance {
        path: path.to_path_buf(),
        message,
    };
    let file = open_provenance(path).map_err(bad)?;
    load_provenance_from(path, file)
}

/// [`load_provenance`] of `file`, already opened from `path` (which only names it).
pub(crate) fn load_provenance_from(
    path: &Path,
    file: std::fs::File,
) -> Result<Vec<Result<Envelope, Rejection>>, InputError> {
    let bad = |message: String| InputError::Provenance {
        path: path.to_path_buf(),
        message,
    };
    let mut bytes = Vec::new();
    file.take(MAX_PROVENANCE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_PROVENANCE_BYTES {
        return Err(bad(format!(
            "larger than {} MiB; not a provenance file",
            MAX_PROVENANCE_BYTES >> 20
        )));
    }
    let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
    // Read straight into the types, never into a tree of JSON values: a tree costs tens of
    // times the text (a 63 MB file of `{"":0}` objects took 6 GB), and it would be built
    // before any signature is checked. The types refuse unknown fields by name at every
    // level (so an unknown field is not even parsed, however large its value) and, being
    // structs, refuse a field given twice.
    match top_level(&text) {
        TopLevel::Bundle => {
            let bundle = serde_json::from_str::<ReadBundle>(&text)
                .map_err(|e| bad(format!("not a Sigstore bundle: {e}")))?;
            match bundle.envelope() {
                Ok(env) => Ok(vec![Ok(env)]),
                Err(Some(refusal)) => Ok(vec![Err(Rejection::new("bundle", refusal.0))]),
                Err(None) => Err(bad(
                    "a Sigstore bundle without a dsseEnvelope or a messageSignature".into(),
                )),
            }
        }
        TopLevel::Envelope => {
            let env = serde_json::from_str::<Envelope>(&text)
                .map_err(|e| bad(format!("not a DSSE envelope or a Sigstore bundle: {e}")))?;
            Ok(vec![Ok(env)])
        }
        TopLevel::Lines => {
            let mut out = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let env = serde_json::from_str::<Envelope>(line)
                    .map_err(|e| bad(format!("line {}: not a DSSE envelope: {e}", i + 1)))?;
                out.push(Ok(env));
            }
            if out.is_empty() {
                return Err(bad("empty: no DSSE envelope".into()));
            }
            Ok(out)
        }
    }
}

/// What a provenance file is, by content.
enum TopLevel {
    /// One JSON object with a `mediaType`.
    Bundle,
    /// One JSON object without one.
    Envelope,
    /// Anything else: JSON Lines.
    Lines,
}

/// Tells the formats apart in one pass that keeps nothing: the values are skipped
/// ([`serde::de::IgnoredAny`]), only whether a top-level key is `mediaType` is remembered.
fn top_level(text: &str) -> TopLevel {
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut media_type = false;
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                media_type |= key == "mediaType";
                map.next_value::<de::IgnoredAny>()?;
            }
            Ok(media_type)
        }
    }
    struct HasMediaType(bool);
    impl<'de> Deserialize<'de> for HasMediaType {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(Keys).map(HasMediaType)
        }
    }
    if !text.trim_start().starts_with('{') {
        return TopLevel::Lines;
    }
    match serde_json::from_str::<HasMediaType>(text) {
        Ok(HasMediaType(true)) => TopLevel::Bundle,
        Ok(HasMediaType(false)) => TopLevel::Envelope,
        Err(_) => TopLevel::Lines,
    }
}

/// Opens `path` for reading (following symlinks: the path is what the caller will ship)
/// without waiting, and says what it is, examined through the descriptor so that what is
/// examined is what is read. A fifo opened the usual way waits for a writer that may never
/// come; `O_NONBLOCK` means nothing for a regular file's reads.
fn open_examined(path: &Path) -> std::io::Result<(std::fs::File, std::fs::FileType)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)?;
    let kind = file.metadata()?.file_type();
    Ok((file, kind))
}

/// What a file that is not a regular file is, for a message.
fn kind_name(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a fifo"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a device"
    }
}

/// sha256 of an artifact, which must be a regular file: a directory cannot be hashed, a fifo
/// or a device (`/dev/zero`) is not bytes that can be shipped after they were verified.
fn artifact_sha256(path: &Path) -> Result<String, InputError> {
    let io = |source| InputError::Artifact {
        path: path.to_path_buf(),
        source,
    };
    let (file, kind) = open_examined(path).map_err(io)?;
    if !kind.is_file() {
        return Err(InputError::ArtifactKind {
            path: path.to_path_buf(),
            kind: kind_name(kind),
        });
    }
    crate::provenance::sha256_read(file).map_err(io)
}

/// Opens the provenance file: a regular file, or a fifo (how `--provenance <(curl …)`
/// arrives), read blocking once opened: with a writer it yields what is written, without one
/// it ends at once.
fn open_provenance(path: &Path) -> Result<std::fs::File, String> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileTypeExt;
    let (file, kind) = open_examined(path).map_err(|e| format!("cannot read: {e}"))?;
    if kind.is_file() {
        return Ok(file);
    }
    if !kind.is_fifo() {
        return Err(format!("not a regular file ({})", kind_name(kind)));
    }
    nix::fcntl::fcntl(
        file.as_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )
    .map_err(|e| format!("cannot read: {e}"))?;
    Ok(file)
}

fn print_verdicts(verdicts: &[Verdict], json: bool) {
    if json {
        let list: Vec<Value> = verdicts
            .iter()
            .map(|v| {
                let (subject, check, details) = match &v.outcome {
                    Ok(name) => (name.clone(), None, None),
                    Err(r) => (None, Some(r.check), Some(r.details.clone())),
                };
                serde_json::json!({
                    "artifact": v.artifact.display().to_string(),
                    "sha256": v.sha256,
                    "accepted": v.outcome.is_ok(),
                    "subject": subject,
                    "check": check,
                    "details": details,
                })
            })
            .collect();
        println!("{}", Value::Array(list));
        return;
    }
    for v in verdicts {
        println!("{}", verdict_line(v));
    }
}

/// One line of text output: `ACCEPTED <path> (<subject>)` or `REJECTED <path>: <rejection>`,
/// control characters escaped: a rejection can quote text nothing signed (a key id, a parser's
/// message), and a newline in it or in a path could print a line a script reads as `ACCEPTED`.
///
/// The subject name comes from the statement, and the job chose it: quoted and cut as every
/// value a rejection quotes from it is (`bulwark_protocol::error::quote`), so that where it
/// ends is never in doubt. `--json` carries it whole, for scripts that compare it.
fn verdict_line(v: &Verdict) -> String {
    escape(&match &v.outcome {
        Ok(name) => format!(
            "ACCEPTED {} ({})",
            v.artifact.display(),
            name.as_deref().map_or_else(
                || "unnamed subject".to_string(),
                bulwark_protocol::error::quote
            )
        ),
        Err(r) => format!("REJECTED {}: {r}", v.artifact.display()),
    })
    .into_owned()
}

/// Most characters of one line printed on stderr for unusable input.
const MAX_ERROR_LINE_CHARS: usize = 2_000;

/// The lines printed on stderr for unusable input: the error, then each cause; escaped and
/// bounded, since a parser's message quotes the provenance file (an unknown field's name).
pub(crate) fn error_lines(e: &InputError) -> Vec<String> {
    let mut lines = vec![format!("bulwark: verify: {e}")];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        lines.push(format!("  caused by: {s}"));
        source = s.source();
    }
    lines
        .into_iter()
        .map(|l| {
            let mut chars = l.chars();
            let head: String = chars.by_ref().take(MAX_ERROR_LINE_CHARS).collect();
            let more = if chars.next().is_some() { "…" } else { "" };
            format!("{}{more}", escape(&head))
        })
        .collect()
}

fn shown(s: Option<&str>) -> String {
    s.map_or_else(|| "absent".to_string(), bulwark_protocol::error::quote)
}

/// A JSON value parsed with duplicate object keys refused.
///
/// serde_json's own `Value` keeps the last of two equal keys; other parsers keep the first or
/// fail. Refusing duplicates makes the one reading of the signed bytes the only reading.
#[derive(Debug)]
pub struct StrictValue(pub Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        StrictValue::deserialize(d).map(|v| v.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "duplicate key {}",
                    bulwark_protocol::error::quote(&key)
                )));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provenance::bundle::BUNDLE_MEDIA_TYPE;
    use crate::provenance::keys::{Algorithm, LocalKey, Signer};

    pub(super) fn statement_json() -> Value {
        serde_json::json!({
            "_type": STATEMENT_TYPE,
            "subject": [{ "name": "app", "digest": { "sha256": "a".repeat(64) } }],
            "predicateType": SLSA_PROVENANCE_V1,
            "predicate": {
                "buildDefinition": {
                    "buildType": BUILD_TYPE,
                    "externalParameters": { "trust": "untrusted" },
                    "internalParameters": { "weakened": [] },
                },
                "runDetails": {
                    "builder": { "id": "https://example.invalid/b" },
                    "metadata": { "invocationId": "1", "startedOn": "2030-01-01T00:00:00Z", "finishedOn": "2030-01-01T00:00:01Z" },
                },
            },
        })
    }

    fn signed(payload: &[u8], payload_type: &str, key: &LocalKey) -> Envelope {
        dsse::sign(payload, payload_type, key).unwrap()
    }

    #[test]
    fn a_signed_statement_verifies_and_parses_to_the_signed_content() {
        let key = LocalKey::generate(Algorithm::Ed25519).unwrap();
        let payload = serde_json::to_vec(&statement_json()).unwrap();
        let st = verify_signed(
            &signed(&payload, IN_TOTO_PAYLOAD_TYPE, &key),
            &[key.public()],
        )
        .unwrap();
        assert_eq!(st.statement.subject[0].name.as_deref(), Some("app"));
        assert_eq!(st.signers, [key.keyid().to_string()]);
        let sha = "a".repeat(64);
        assert_eq!(
            check_artifact(
                &sha,
                std::slice::from_ref(&st),
                &Policy::default(),
                SystemTime::now()
            ),
            Ok(Some("app".into()))
        );
        let other = "b".repeat(64);
        let e = check_artifact(&other, &[st], &Policy::default(), SystemTime::now())
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!("subject: sha256 {other} is not the digest of any of the 1 subjects (\"app\")")
        );
    }

    #[test]
    fn with_several_trusted_keys_a_key_bound_to_one_builder_cannot_speak_for_another() {
        // Pool A builds releases; the pull-request pool's key is trusted too, for its own
        // builds. Its host claims pool A's builder id.
        let pool_a = LocalKey::generate(Algorithm::P256).unwrap();
        let prs = LocalKey::generate(Algorithm::Ed25519).unwrap();
        let mut claim = statement_json();
        claim["predicate"]["runDetails"]["builder"]["id"] = "https://ci.example.com/pool-a".into();
        let payload = serde_json::to_vec(&claim).unwrap();
        let keys = [pool_a.public(), prs.public()];
        let sha = "a".repeat(64);
        let by_prs = verify_signed(&signed(&payload, IN_TOTO_PAYLOAD_TYPE, &prs), &keys).unwrap();
        let by_pool_a =
            verify_signed(&signed(&payload, IN_TOTO_PAYLOAD_TYPE, &pool_a), &keys).unwrap();
        // builder_ids alone takes the claim at its word: both are accepted.
        let ids =
            Policy::from_toml_str("builder_ids = [\"https://ci.example.com/pool-a\"]").unwrap();
        for st in [&by_prs, &by_pool_a] {
            check_artifact(&sha, std::slice::from_ref(st), &ids, SystemTime::now()).unwrap();
        }
        // Bound to pool A's key, the claim holds only when that key signed.
        let bound = Policy::from_toml_str(&format!(
            "[builder_keys]\n\"https://ci.example.com/pool-a\" = [\"{}\"]\n\"https://ci.example.com/prs\" = [\"{}\"]\n",
            pool_a.keyid(),
            prs.keyid()
        ))
        .unwrap();
        check_artifact(
            &sha,
            std::slice::from_ref(&by_pool_a),
            &bound,
            SystemTime::now(),
        )
        .unwrap();
        let e = check_artifact(
            &sha,
            std::slice::from_ref(&by_prs),
            &bound,
            SystemTime::now(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(
                "builder_keys: runDetails.builder.id is \"https://ci.example.com/pool-a\""
            ) && e.contains(prs.keyid())
                && e.contains("another builder's key cannot speak for it"),
            "{e}"
        );
        // A builder id the table does not name is refused whoever signed.
        claim["predicate"]["runDetails"]["builder"]["id"] = "https://ci.example.com/pool-b".into();
        let payload = serde_json::to_vec(&claim).unwrap();
        let st = verify_signed(&signed(&payload, IN_TOTO_PAYLOAD_TYPE, &pool_a), &keys).unwrap();
        let e = check_artifact(&sha, &[st], &bound, SystemTime::now())
            .unwrap_err()
            .to_string();
        assert!(e.contains("which builder_keys binds to no key"), "{e}");
    }

    #[test]
    fn the_declared_types_are_checked_in_order_after_the_signature() {
        let key = LocalKey::generate(Algorithm::P256).unwrap();
        let check = |edit: &dyn Fn(&mut Value), ptype: &str| {
            let mut v = statement_json();
            edit(&mut v);
            let env = signed(&serde_json::to_vec(&v).unwrap(), ptype, &key);
            verify_envelope(&env, &[key.public()])
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            check(&|_| {}, "application/json"),
            "payloadType: \"application/json\", expected \"application/vnd.in-toto+json\""
        );
        assert!(check(
            &|v| v["_type"] = STATEMENT_V0_1_TYPE.into(),
            IN_TOTO_PAYLOAD_TYPE
        )
        .starts_with(
            "_type: in-toto Statement v0.1 (https://in-toto.io/Statement/v0.1) is not accepted"
        ));
        assert_eq!(
            check(&|v| v["_type"] = "x".into(), IN_TOTO_PAYLOAD_TYPE),
            "_type: \"x\", expected \"https://in-toto.io/Statement/v1\""
        );
        assert_eq!(
            check(&|v| v["predicateType"] = "https://slsa.dev/provenance/v0.2".into(), IN_TOTO_PAYLOAD_TYPE),
            "predicateType: \"https://slsa.dev/provenance/v0.2\", expected \"https://slsa.dev/provenance/v1\""
        );
        assert!(check(
            &|v| v["predicate"]["buildDefinition"]["buildType"] = "https://other".into(),
            IN_TOTO_PAYLOAD_TYPE
        )
        .starts_with("buildType: \"https://other\", expected"));
        assert!(check(&|v| v["subject"] = 3.into(), IN_TOTO_PAYLOAD_TYPE)
            .starts_with("statement: not an SLSA Provenance v1 statement: invalid type"));
        // A foreign key: the signature check comes first and names both key sets.
        let other = LocalKey::generate(Algorithm::P256).unwrap();
        let env = signed(
            &serde_json::to_vec(&statement_json()).unwrap(),
            IN_TOTO_PAYLOAD_TYPE,
            &other,
        );
        let e = verify_envelope(&env, &[key.public()])
            .unwrap_err()
            .to_string();
        use crate::provenance::keys::Signer;
        assert!(
            e.starts_with("signature: no signature verifies with a trusted key")
                && e.contains(key.keyid())
                && e.contains(other.keyid()),
            "{e}"
        );
    }

    #[test]
    fn duplicate_keys_in_the_signed_payload_are_refused() {
        let key = LocalKey::generate(Algorithm::Ed25519).unwrap();
        let text = serde_json::to_string(&statement_json()).unwrap();
        let dup = text.replacen('{', "{\"_type\":\"https://in-toto.io/Statement/v0.1\",", 1);
        let env = signed(dup.as_bytes(), IN_TOTO_PAYLOAD_TYPE, &key);
        let e = verify_envelope(&env, &[key.public()])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("statement: the signed payload is not JSON: duplicate key \"_type\""),
            "{e}"
        );
    }

    #[test]
    fn a_top_level_key_we_do_not_write_is_refused_whatever_its_case() {
        // Go's encoding/json (cosign, slsa-verifier) matches object keys to struct fields
        // case-insensitively: given "subject" and "Subject" it may read either list, while
        // serde reads only "subject". One signed document, two meanings: refused.
        let key = LocalKey::generate(Algorithm::Ed25519).unwrap();
        let other = serde_json::json!([{ "name": "evil", "digest": { "sha256": "b".repeat(64) } }]);
        for extra in [
            "Subject",
            "SUBJECT",
            "_Type",
            "predicatetype",
            "Predicate",
            "comment",
        ] {
            let mut v = statement_json();
            v[extra] = if extra.eq_ignore_ascii_case("subject") {
                other.clone()
            } else {
                "x".into()
            };
            let env = signed(&serde_json::to_vec(&v).unwrap(), IN_TOTO_PAYLOAD_TYPE, &key);
            let e = verify_envelope(&env, &[key.public()])
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!(
                    "statement: not an SLSA Provenance v1 statement: unknown field `{extra}`"
                )),
                "{extra}: {e}"
            );
        }
        // What the runner writes has no other top-level key, and reads back.
        let written =
            serde_json::to_value(serde_json::from_value::<Statement>(statement_json()).unwrap())
                .unwrap();
        let keys: Vec<&String> = written.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["_type", "predicate", "predicateType", "subject"]);
    }

    #[test]
    fn text_from_the_provenance_file_reaches_the_terminal_escaped_and_bounded() {
        // The key id is not covered by the signature: whoever hands over the provenance file
        // writes it, and it appears in the rejection.
        let key = LocalKey::generate(Algorithm::Ed25519).unwrap();
        let other = LocalKey::generate(Algorithm::Ed25519).unwrap();
        let mut env = signed(
            &serde_json::to_vec(&statement_json()).unwrap(),
            IN_TOTO_PAYLOAD_TYPE,
            &other,
        );
        env.signatures[0].keyid = format!(
            "\u{1b}]0;owned\u{7}\nACCEPTED dist/app.tar.gz (app){}",
            "k".repeat(100_000)
        );
        let rejection = verify_envelope(&env, &[key.public()]).unwrap_err();
        let verdict = Verdict {
            artifact: PathBuf::from("dist/app\n.tar.gz"),
            sha256: "a".repeat(64),
            outcome: Err(rejection),
        };
        let line = verdict_line(&verdict);
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.len() < 1_000, "{} bytes", line.len());
        assert!(line.contains("\\u{1b}]0;owned\\u{7}\\nACCEPTED"), "{line}");
        // Unusable input: serde names an unknown field as it was written.
        let (_dir, p) = write_temp(
            "x.intoto.jsonl",
            "{\"payload\":\"\",\"payloadType\":\"\",\"signatures\":[],\"\\u001b[2J\\u001b]0;owned\\u0007\":1}\n",
        );
        let e = load_provenance(&p).unwrap_err();
        let lines = error_lines(&e);
        assert!(
            lines.iter().all(|l| !l.chars().any(char::is_control)),
            "{lines:?}"
        );
        assert!(lines[0].contains("\\u{1b}[2J"), "{lines:?}");
    }

    #[test]
    fn a_long_subject_name_is_cut_on_the_accepted_line_as_quoted_values_are() {
        let name = format!("dist/{}", "n".repeat(10_000));
        let verdict = Verdict {
            artifact: PathBuf::from("dist/app.tar.gz"),
            sha256: "a".repeat(64),
            outcome: Ok(Some(name.clone())),
        };
        let shown: String = name.chars().take(64).collect();
        assert_eq!(
            verdict_line(&verdict),
            format!("ACCEPTED dist/app.tar.gz (\"{shown}\"…)")
        );
        let short = Verdict {
            outcome: Ok(Some("dist/app.tar.gz".into())),
            ..verdict
        };
        assert_eq!(
            verdict_line(&short),
            "ACCEPTED dist/app.tar.gz (\"dist/app.tar.gz\")"
        );
    }

    #[test]
    fn marks_that_reorder_text_are_escaped_in_what_verify_prints() {
        let verdict = Verdict {
            artifact: PathBuf::from("dist/\u{202E}zg.rat.ppa"),
            sha256: "a".repeat(64),
            outcome: Err(Rejection::new("subject", "nothing")),
        };
        let line = verdict_line(&verdict);
        assert!(!line.contains('\u{202E}'), "{line:?}");
        assert!(line.contains("\\u{202e}zg.rat.ppa"), "{line}");
        assert_eq!(escape("a\u{2066}b\u{200f}c"), "a\\u{2066}b\\u{200f}c");
        // And the marks that hide text: a zero-width space in a subject's name.
        let verdict = Verdict {
            artifact: PathBuf::from("dist/app.tar.gz"),
            sha256: "a".repeat(64),
            outcome: Ok(Some("dist/app\u{200B}.tar.gz\u{FEFF}".into())),
        };
        assert_eq!(
            verdict_line(&verdict),
            "ACCEPTED dist/app.tar.gz (\"dist/app\\u{200b}.tar.gz\\u{feff}\")"
        );
    }

    #[test]
    fn an_envelope_with_more_signatures_than_are_checked_is_refused_unread() {
        let key = LocalKey::generate(Algorithm::Ed25519).unwrap();
        let mut env = signed(
            &serde_json::to_vec(&statement_json()).unwrap(),
            IN_TOTO_PAYLOAD_TYPE,
            &key,
        );
        let one = env.signatures[0].clone();
        env.signatures = vec![one; crate::provenance::dsse::MAX_SIGNATURES + 1];
        let err = verify_envelope(&env, &[key.public()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("17 signatures; at most 16 are checked"),
            "{err}"
        );
        env.signatures
            .truncate(crate::provenance::dsse::MAX_SIGNATURES);
        verify_envelope(&env, &[key.public()]).unwrap();
    }

    #[test]
    fn an_artifact_or_provenance_that_is_not_a_regular_file_is_unusable_input_at_once() {
        let (dir, _) = write_temp("placeholder", "");
        let fifo = dir.join("app.tar.gz");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let key = LocalKey::generate(Algorithm::Ed25519).unwrap();
        let pubkey = dir.join("signing.pub");
        std::fs::write(&pubkey, key.public().to_pem().unwrap()).unwrap();
        let env = signed(b"{}", IN_TOTO_PAYLOAD_TYPE, &key);
        let (_dir, prov) = write_temp("p.intoto.jsonl", &dsse::to_line(&env).unwrap());
        // Opening a fifo for reading waits for a writer: without care, verify hangs.
        let check = |provenance: PathBuf, artifact: PathBuf| {
            let req = Request {
                provenance,
                keys: vec![pubkey.clone()],
                policy: None,
                json: false,
                artifacts: vec![artifact],
            };
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(verify(&req, SystemTime::now()).map_err(|e| e.to_string()));
            });
            rx.recv_timeout(std::time::Duration::from_secs(10))
                .expect("verify returns instead of waiting on a fifo")
                .unwrap_err()
        };
        let e = check(prov.clone(), fifo.clone());
        assert_eq!(
            e,
            format!("artifact {}: not a regular file (a fifo)", fifo.display())
        );
        // A provenance fifo may be a pipe from the operator (`<(curl …)`); one without a
        // writer is empty, at once.
        let e = check(fifo.clone(), prov.clone());
        assert_eq!(
            e,
            format!("provenance {}: empty: no DSSE envelope", fifo.display())
        );
        let e = check(prov, dir.to_path_buf());
        assert_eq!(
            e,
            format!(
                "artifact {}: not a regular file (a directory)",
                dir.display()
            )
        );
    }

    #[test]
    fn an_unusable_key_names_the_flag_and_the_file_at_once() {
        let (dir, prov) = write_temp("p.intoto.jsonl", "");
        let run = |key: PathBuf| {
            let req = Request {
                provenance: prov.clone(),
                keys: vec![key],
                policy: None,
                json: false,
                artifacts: vec![prov.clone()],
            };
            crate::tools::testutil::returns_within("verify", move || {
                verify(&req, SystemTime::now())
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .unwrap_err()
        };
        let pipe = dir.join("signing.pub");
        crate::tools::testutil::fifo(&pipe);
        assert_eq!(
            run(pipe.clone()),
            format!(
                "--key: public key {}: cannot read: not a regular file (a fifo)",
                pipe.display()
            )
        );
        LocalKey::generate(Algorithm::P256)
            .unwrap()
            .write_pair(&dir.join("keys"))
            .unwrap();
        let private = dir.join("keys/signing.key");
        assert_eq!(
            run(private.clone()),
            format!(
                "--key: public key {}: not an SPKI PEM ECDSA P-256 or Ed25519 public key; it is \
                 a private key: pass the public key (signing.pub) instead",
                private.display()
            )
        );
    }

    /// `text` in a file named `name` in a fresh directory, and the guard that removes it.
    fn write_temp(name: &str, text: &str) -> (crate::tools::testutil::TempDir, PathBuf) {
        let dir = crate::tools::testutil::TempDir::named("bulwark-verify");
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn the_file_format_is_decided_by_content_not_name() {
        let key = LocalKey::generate(Algorithm::P256).unwrap();
        let env = signed(b"{}", IN_TOTO_PAYLOAD_TYPE, &key);
        let bundle = crate::provenance::bundle::wrap(&env).unwrap();
        // A pretty-printed bundle named .jsonl is still a bundle.
        let (_dir, p) = write_temp(
            "x.intoto.jsonl",
            &serde_json::to_string_pretty(&bundle).unwrap(),
        );
        assert_eq!(load_provenance(&p).unwrap(), vec![Ok(env.clone())]);
        // Two lines are two envelopes, blank lines skipped.
        let line = dsse::to_line(&env).unwrap();
        let (_dir, p) = write_temp("x.json", &format!("{line}\n\n{line}\n"));
        assert_eq!(load_provenance(&p).unwrap().len(), 2);
        // A bundle of another version is readable but rejected.
        let mut v = serde_json::to_value(&bundle).unwrap();
        v["mediaType"] = "application/vnd.dev.sigstore.bundle+json;version=0.1".into();
        let (_dir, p) = write_temp("b.sigstore.json", &v.to_string());
        let got = load_provenance(&p).unwrap();
        assert!(got[0].as_ref().unwrap_err().to_string().starts_with(
            "bundle: mediaType is \"application/vnd.dev.sigstore.bundle+json;version=0.1\""
        ));
        v["mediaType"] = BUNDLE_MEDIA_TYPE.into();
        let sig = v["dsseEnvelope"]["signatures"][0].clone();
        v["dsseEnvelope"]["signatures"]
            .as_array_mut()
            .unwrap()
            .push(sig);
        let (_dir, p) = write_temp("b.sigstore.json", &v.to_string());
        assert_eq!(
            load_provenance(&p).unwrap()[0]
                .as_ref()
                .unwrap_err()
                .to_string(),
            "bundle: dsseEnvelope has 2 signatures; a Sigstore bundle carries exactly one"
        );
        // Unreadable input names the file and the line.
        let (_dir, p) = write_temp("bad.jsonl", &format!("{line}\nnot json\n"));
        let e = load_provenance(&p).unwrap_err().to_string();
        assert!(e.contains("bad.jsonl: line 2: not a DSSE envelope"), "{e}");
        let (_dir, p) = write_temp("empty.jsonl", "\n\n");
        assert!(load_provenance(&p)
            .unwrap_err()
            .to_string()
            .ends_with("empty: no DSSE envelope"));
    }
}

#[cfg(test)]
mod bundle_tests {
    use super::*;
    use crate::provenance::keys::{Algorithm, LocalKey};

    /// What `load_provenance` makes of Bulwark's own bundle after `edit`.
    fn loaded(edit: &dyn Fn(&mut Value)) -> Result<Result<Envelope, String>, String> {
        let key = LocalKey::generate(Algorithm::P256).unwrap();
        let env = dsse::sign(b"{}", IN_TOTO_PAYLOAD_TYPE, &key).unwrap();
        let mut v = serde_json::to_value(crate::provenance::bundle::wrap(&env).unwrap()).unwrap();
        edit(&mut v);
        let dir = crate::tools::testutil::TempDir::named("bulwark-bundle");
        let p = dir.join("b.sigstore.json");
        std::fs::write(&p, v.to_string()).unwrap();
        let mut got = load_provenance(&p).map_err(|e| e.to_string())?;
        assert_eq!(got.len(), 1);
        Ok(got.remove(0).map_err(|r| r.to_string()))
    }

    #[test]
    fn a_bundle_is_accepted_only_as_bulwark_writes_it_key_only_with_one_envelope() {
        assert!(matches!(loaded(&|_| {}), Ok(Ok(_))));
        let refused = |edit: &dyn Fn(&mut Value), want: &str| {
            let got = loaded(edit).unwrap().unwrap_err();
            assert!(got.starts_with(want), "{got}\nwanted: {want}");
        };
        let cert = serde_json::json!({ "rawBytes": "MIIB" });
        refused(
            &|v| {
                v.as_object_mut().unwrap().remove("verificationMaterial");
            },
            "bundle: the bundle has no verificationMaterial",
        );
        refused(
            &|v| v["verificationMaterial"]["certificate"] = cert.clone(),
            "bundle: verificationMaterial holds a certificate",
        );
        refused(
            &|v| {
                let vm = v["verificationMaterial"].as_object_mut().unwrap();
                vm.remove("publicKey");
                vm.insert(
                    "x509CertificateChain".into(),
                    serde_json::json!({ "certificates": [cert] }),
                );
            },
            "bundle: verificationMaterial holds a certificate",
        );
        refused(
            &|v| {
                v["verificationMaterial"]["tlogEntries"] = serde_json::json!([{ "logIndex": "1" }])
            },
            "bundle: verificationMaterial has 1 transparency log entries, which Bulwark does not \
             check; verify such a bundle with a Sigstore verifier",
        );
        refused(
            &|v| {
                v["verificationMaterial"]["timestampVerificationData"] =
                    serde_json::json!({ "rfc3161Timestamps": [{ "signedTimestamp": "AA==" }] })
            },
            "bundle: verificationMaterial has timestampVerificationData",
        );
        refused(
            &|v| v["messageSignature"] = serde_json::json!({ "signature": "AA==" }),
            "bundle: the bundle has both a dsseEnvelope and a messageSignature",
        );
        refused(
            &|v| {
                let sig = v.as_object_mut().unwrap().remove("dsseEnvelope").unwrap();
                v["messageSignature"] =
                    serde_json::json!({ "signature": sig["signatures"][0]["sig"] });
            },
            "bundle: the bundle has a messageSignature (a signature over a blob's digest), not a \
             dsseEnvelope",
        );
        // Unusable input: no content at all, or a field the bundle format does not have.
        let e = loaded(&|v| {
            v.as_object_mut().unwrap().remove("dsseEnvelope");
        })
        .unwrap_err();
        assert!(
            e.ends_with("a Sigstore bundle without a dsseEnvelope or a messageSignature"),
            "{e}"
        );
        let e = loaded(&|v| v["evil"] = 1.into()).unwrap_err();
        assert!(
            e.contains(": not a Sigstore bundle: unknown field `evil`"),
            "{e}"
        );
        let e = loaded(&|v| v["verificationMaterial"]["evil"] = 1.into()).unwrap_err();
        assert!(
            e.contains(": not a Sigstore bundle: unknown field `evil`"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;
    use crate::provenance::dsse::EnvelopeSignature;
    use crate::provenance::keys::{Algorithm, LocalKey, Signer};

    #[test]
    fn a_file_past_the_failed_signature_budget_is_refused_whole_by_verify_and_inventory_add() {
        let key = LocalKey::generate(Algorithm::P256).unwrap();
        let other = LocalKey::generate(Algorithm::P256).unwrap();
        let dir = crate::tools::testutil::TempDir::named("bulwark-budget");
        let pubkey = dir.join("signing.pub");
        std::fs::write(&pubkey, key.public().to_pem().unwrap()).unwrap();
        // A hundred statements our key signed, each also carrying fifteen signatures that
        // claim our key and that it did not make (a genuine signer never writes one): the
        // file is refused once it has shown more than the budget of them. (Replaying one
        // such envelope costs its failures once: its payload is then known to be signed.)
        let bogus = EnvelopeSignature {
            keyid: key.keyid().to_string(),
            sig: dsse::sign(b"{}", IN_TOTO_PAYLOAD_TYPE, &other)
                .unwrap()
                .signatures[0]
                .sig
                .clone(),
        };
        let mut lines = String::new();
        for n in 0..100 {
            let mut statement = super::tests::statement_json();
            statement["predicate"]["runDetails"]["metadata"]["invocationId"] = n.to_string().into();
            let payload = serde_json::to_vec(&statement).unwrap();
            let mut env = dsse::sign(&payload, IN_TOTO_PAYLOAD_TYPE, &key).unwrap();
            let genuine = env.signatures[0].clone();
            env.signatures = vec![bogus.clone(); 15];
            env.signatures.push(genuine);
            lines.push_str(&dsse::to_line(&env).unwrap());
            lines.push('\n');
        }
        let prov = dir.join("p.intoto.jsonl");
        std::fs::write(&prov, &lines).unwrap();
        let req = Request {
            provenance: prov.clone(),
            keys: vec![pubkey.clone()],
            policy: None,
            json: false,
            artifacts: vec![pubkey.clone()],
        };
        let e = verify(&req, SystemTime::now()).unwrap_err();
        assert!(matches!(e, InputError::Provenance { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "provenance {}: more than 64 signatures claim a trusted key (or name no key) \
                 and verify under none; the file is refused unchecked: a signer writes \
                 signatures that verify",
                prov.display()
            )
        );
        let out =
            crate::inventory::read_verified(std::slice::from_ref(&prov), &[key.public()], None)
                .unwrap();
        let why = out[0].records.as_ref().unwrap_err();
        assert!(
            why.starts_with("more than 64 signatures claim a trusted key"),
            "{why}"
        );
        // Within the budget (four of them: 60 failures) they verify; and one of them
        // replayed a hundred times costs its failures once.
        let first: Vec<&str> = lines.lines().take(4).collect();
        std::fs::write(&prov, first.join("\n") + "\n").unwrap();
        assert!(verify(&req, SystemTime::now()).is_ok());
        std::fs::write(&prov, format!("{}\n", first[0]).repeat(100)).unwrap();
        assert!(verify(&req, SystemTime::now()).is_ok());
    }
}
