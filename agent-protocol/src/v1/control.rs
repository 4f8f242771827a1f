//! The control-plane protocol between a runner and the coordinator (docs/control-plane.md).
//!
//! Why these shapes:
//!
//! - **Registration** trades a one-time, expiring token (made by the coordinator's operator,
//!   handed to the host's operator out of band) for a runner id bound to a public key the
//!   runner generated itself. The private key never leaves the host; the token is useless once
//!   used, so a leaked provisioning script cannot register a second runner. The runner may
//!   replace that key later ([`RekeyRequest`], signed with the old key, proven with the new).
//! - **Every later request is signed** by that key over [`signing_input`]: method, path, a
//!   timestamp, a nonce, the runner id and the body's sha256. A bearer secret was rejected:
//!   anything that logs or proxies a request (a TLS-terminating load balancer, a debug log)
//!   would hold a credential to impersonate the runner forever; a signature proves possession
//!   per request, expires with its timestamp, and is refused when replayed.
//! - **Jobs are leased**, not pushed: the runner asks for work (no inbound port on build hosts).
//!   A lease carries the spec and the trust level, which comes from whoever submitted the job
//!   to the coordinator and never from the job's own files. The runner says which jobs it
//!   holds when it asks ([`LeaseRequest`]), so a lease whose answer was lost on the way is
//!   offered to it again rather than left to run out; and it reports a lease it cannot read
//!   (a newer coordinator's field, say) as the job's runner error rather than leaving it.
//! - **Job identity** is a short-lived OIDC token (JWT, ES256) the coordinator mints only for
//!   a trusted job that is leased to the asking runner and not finished; its claims come from
//!   the coordinator's record of the job, never from the runner's request (only the audience
//!   does).
//!
//! Everything here is shape and pure functions: no I/O, no cryptography (the caller hashes
//! the body and signs or verifies the bytes).

use serde::{Deserialize, Serialize};

use crate::{JobSpec, Trust};

/// The prefix of a registration token, so one pasted in the wrong place is recognisable.
pub const REGISTRATION_TOKEN_PREFIX: &str = "bwreg_";

/// Headers of a signed runner request.
pub mod headers {
    /// The runner id the coordinator assigned at registration.
    pub const RUNNER: &str = "bulwark-runner";
    /// Seconds since the Unix epoch when the request was signed.
    pub const TIMESTAMP: &str = "bulwark-timestamp";
    /// A value unique per request (at least 16 random bytes, base64url).
    pub const NONCE: &str = "bulwark-nonce";
    /// Standard padded base64 of the signature over [`super::signing_input`].
    pub const SIGNATURE: &str = "bulwark-signature";
    /// The body's sha256, lowercase hex: the digest the signature covers, sent so that the
    /// coordinator can check the signature before it reads the body. A coordinator requires
    /// it on the routes whose body may be larger than 64 KiB (the result report, the live
    /// log) and on the lease (a runner that cannot report a job is given none); one that
    /// predates it ignores it, so runners are upgraded first.
    pub const CONTENT_SHA256: &str = "bulwark-content-sha256";
    /// Set by the coordinator on every answer its routes make (value `1`), a `5xx` included:
    /// a runner counts a `503` carrying it (a coordinator with no room for a large body,
    /// answered on purpose) as an answer of its coordinator, and neither a `5xx` without it
    /// (a proxy in front of a coordinator that is down) nor another marked `5xx` (a `500`:
    /// a coordinator that cannot do its work) as one.
    pub const COORDINATOR: &str = "bulwark-coordinator";
}

/// How far a signed request's timestamp may be from the coordinator's clock, in seconds.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// The largest request body either side accepts (a result report with its provenance).
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// The slowest link a request body is expected to cross, in bytes per second: each side
/// gives a request with a body of `n` bytes [`body_allowance`]`(n)` on top of its fixed time
/// (the runner's daemon its 30 s per request, the coordinator its body and request deadlines),
/// so an 8 MiB result over a 64 KiB/s link (128 s) is neither given up by the runner nor cut
/// by the coordinator, while a body arriving slower than this is.
///
/// Why 64 KiB/s: about half a megabit, below what a build host on a congested or metered
/// uplink keeps up, and slow enough that the 8 MiB result takes about two minutes; a lower
/// figure would let a slow (or stolen-key) client hold a connection and its share of the
/// coordinator's body budget longer for the same bytes.
pub const MIN_BODY_RATE: u64 = 64 << 10;

/// How long the coordinator gives an output upload before [`MIN_BODY_RATE`] applies to it:
/// from then on it must have arrived at that rate since, so its deadline is this plus its
/// length at that rate. The runner waits that long, and its own answer timeout more.
pub const UPLOAD_GRACE: std::time::Duration = std::time::Duration::from_secs(120);

/// The time [`MIN_BODY_RATE`] takes to carry `len` bytes, rounded up to whole seconds.
pub fn body_allowance(len: u64) -> std::time::Duration {
    std::time::Duration::from_secs(len.div_ceil(MIN_BODY_RATE))
}

/// The exact bytes a runner signs for a request, and the coordinator verifies.
///
/// Line-separated, with a domain tag so a signature over anything else (provenance, say) can
/// never be replayed as a request. `path` is the request target as sent (path and query).
/// No field may contain a newline: [`signing_input`] refuses one rather than sign an
/// ambiguous string.
pub fn signing_input(
    method: &str,
    path: &str,
    timestamp: u64,
    nonce: &str,
    runner_id: &str,
    body_sha256_hex: &str,
) -> Option<Vec<u8>> {
    let fields = [method, path, nonce, runner_id, body_sha256_hex];
    if fields.iter().any(|f| f.contains(['\n', '\r'])) {
        return None;
    }
    Some(
        format!(
            "bulwark-request-v1\n{method}\n{path}\n{timestamp}\n{nonce}\n{runner_id}\n{body_sha256_hex}"
        )
        .into_bytes(),
    )
}

/// `POST /v1/runners/register`: the only unsigned runner request. Its `Debug` never shows the
/// token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The one-time registration token.
    pub token: String,
    /// A name for the runner, matching [`crate::NAME_PATTERN`] (for people and job claims).
    pub name: String,
    /// The runner's public key: SPKI PEM, ECDSA P-256.
    pub public_key: String,
}

impl std::fmt::Debug for RegisterRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterRequest")
            .field("token", &"<redacted>")
            .field("name", &self.name)
            .field("public_key", &self.public_key)
            .finish()
    }
}

/// The answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterResponse {
    /// The id to send in [`headers::RUNNER`] from now on.
    pub runner_id: String,
    /// The coordinator's OIDC issuer URL (the `iss` of job tokens).
    pub issuer: String,
}

/// `POST /v1/runners/rekey`: a registered runner replaces its identity key. The request is
/// signed, as every runner request, with the key being replaced; `proof` shows that the runner
/// also holds the new one, so a runner cannot take on a key that is someone else's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RekeyRequest {
    /// The new public key: SPKI PEM, ECDSA P-256.
    pub public_key: String,
    /// The new key's signature (ASN.1 DER, standard base64) over [`rekey_proof_input`].
    pub proof: String,
}

/// What the new key signs in a [`RekeyRequest`]: the runner it is for and the key as sent.
/// `None` when the runner id holds a line break.
pub fn rekey_proof_input(runner_id: &str, public_key_pem: &str) -> Option<Vec<u8>> {
    if runner_id.contains(['\n', '\r']) {
        return None;
    }
    Some(format!("bulwark-rekey-v1\n{runner_id}\n{public_key_pem}").into_bytes())
}

/// The answer to a re-keying: the runner's id, unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RekeyResponse {
    /// The runner's id; its later requests are checked against the new key.
    pub runner_id: String,
}

/// `POST /v1/jobs` (operator, bearer admin token): queue a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    /// The job spec. Its source must be a git commit or a url with its sha256: a runner has
    /// no local directory to take it from.
    pub spec: JobSpec,
    /// The trust level, decided by the submitter (the CI system's event: a pull request is
    /// untrusted, a protected branch or release tag trusted).
    pub trust: Trust,
}

/// The answer to [`SubmitJob`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submitted {
    /// The job's id.
    pub job_id: String,
}

/// The most job ids a [`LeaseRequest`] may list in `holding`: a daemon holds at most its
/// `[daemon] slots` jobs, and slots are at most this many.
pub const MAX_HOLDING: usize = 256;

/// The longest job id either side accepts (a job id becomes a directory name on the runner).
pub const MAX_JOB_ID_LEN: usize = 128;

/// Checks that `id` is a plain job id: 1 to [`MAX_JOB_ID_LEN`] ASCII letters, digits, `-` or
/// `_`. A runner makes a directory of it and puts it in request paths, so it takes no other.
pub fn check_job_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > MAX_JOB_ID_LEN
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "not a job id (1 to {MAX_JOB_ID_LEN} ASCII letters, digits, '-' or '_')"
        ));
    }
    Ok(())
}

/// `POST /v1/runners/lease`'s body: what the asking runner already holds.
///
/// Why it exists: a lease is committed before its answer is sent, so an answer lost on the
/// way (a connection cut, a timeout) left the job leased to a runner that never heard of it,
/// unreported until its lease ran out (then `lost`). A runner that sends `holding` (every
/// job it has leased and not finished reporting) is first offered again, with the same lease,
/// the oldest job leased to it that is live, not cancelled and not in that list; only then a
/// new one. A runner restarted after a crash sends an empty list and is offered what it held
/// before; its daemon decides what to do with a job it may have started (docs/control-plane.md,
/// "Lost answers and restarts").
///
/// Compatibility, both ways: a body without `holding` (`{}`, what runners sent before, or an
/// empty body) is answered exactly as before (never an offer again), and a coordinator from
/// before ignores the body, so a runner that sends `holding` works with it (it is then never
/// offered a job again, as before). For the same reason a coordinator ignores fields of this body it
/// does not know, unlike the rest of the protocol: nothing a runner asks for here may be
/// relied on (an older coordinator ignores it all), so ignoring a newer runner's field is what
/// that runner must expect anyway, while refusing it would stop the runner leasing from a
/// coordinator it was upgraded ahead of.
///
/// Read only with [`LeaseRequest::parse`], which checks every id and the count: there is no
/// `Deserialize`, which would skip those checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LeaseRequest {
    /// The jobs the runner has leased and not finished reporting, at most [`MAX_HOLDING`],
    /// each a job id ([`check_job_id`]). Absent: answered as a runner from before `holding`
    /// is (no job is offered again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holding: Option<Vec<String>>,
}

impl LeaseRequest {
    /// Reads a lease request body: empty, or a JSON object whose `holding`, when present and
    /// not `null`, is a list of at most [`MAX_HOLDING`] job ids. Errors name the field
    /// (`holding`, `holding[3]`).
    pub fn parse(body: &[u8]) -> Result<LeaseRequest, String> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(LeaseRequest::default());
        }
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let object = value
            .as_object()
            .ok_or("must be a JSON object, such as {\"holding\": []}")?;
        let holding = match object.get("holding") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Array(ids)) => {
                if ids.len() > MAX_HOLDING {
                    return Err(format!(
                        "holding: {} job ids, at most {MAX_HOLDING}",
                        ids.len()
                    ));
                }
                let mut checked = Vec::with_capacity(ids.len());
                for (i, id) in ids.iter().enumerate() {
                    let id = id
                        .as_str()
                        .ok_or_else(|| format!("holding[{i}]: must be a job id (a string)"))?;
                    check_job_id(id).map_err(|e| format!("holding[{i}]: {e}"))?;
                    checked.push(id.to_owned());
                }
                Some(checked)
            }
            Some(_) => return Err("holding: must be a list of job ids".into()),
        };
        Ok(LeaseRequest { holding })
    }
}

/// How long a lease outlives the job's own timeout (the coordinator leases a job for its
/// timeout, or the default, plus this): time for the runner to fetch the source and tools
/// before the clock of the job starts, and to report afterwards.
pub const LEASE_GRACE_SECS: u64 = 600;

/// `POST /v1/runners/lease` answers 200 with this when there is a job, 204 when there is none.
///
/// It refuses unknown fields, here and in the spec it carries: a field this runner does not
/// understand may be a protection it would silently not apply. A runner that cannot read a
/// lease whose `job_id` it can read reports that job as a `runner-error` saying why, without
/// running anything (docs/control-plane.md, "Leases a runner cannot read").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    /// The job's id.
    pub job_id: String,
    /// The trust level the submitter gave.
    pub trust: Trust,
    /// The job spec as submitted.
    pub spec: JobSpec,
    /// When the lease ends (seconds since the epoch): a result after it is refused and the job
    /// is recorded as lost.
    pub expires_at: u64,
}

/// `POST /v1/jobs/{id}/heartbeat` (runner, empty body, while the job runs): what the
/// coordinator wants done with the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The operator cancelled the job: stop it and report what ran.
    pub cancel: bool,
}

/// `POST /v1/jobs/{id}/cancel` (operator, empty body): what was done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelAnswer {
    /// The job's state now: `finished` (it was queued: it will never run) or `leased` (its
    /// runner stops it within its poll interval and reports what ran).
    pub state: JobState,
}

/// `POST /v1/jobs/{id}/id-token`: a job identity token for a trusted job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdTokenRequest {
    /// The `aud` claim: the service the token is for (e.g. `sts.amazonaws.com`).
    pub audience: String,
}

/// The answer to [`IdTokenRequest`].
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IdToken {
    /// The signed JWT (compact serialization). A secret: never logged.
    pub token: String,
    /// Its `exp` claim.
    pub expires_at: u64,
}

impl std::fmt::Debug for IdToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdToken")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// `POST /v1/jobs/{id}/result`: what the runner reports when the job is over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultReport {
    /// `result.json` as the runner wrote it.
    pub result: serde_json::Value,
    /// `provenance.intoto.jsonl` when the run produced one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<String>,
    /// The run's logs (`job.log`, `egress.log`), each uploaded like an output before the
    /// report (`PUT /v1/jobs/{id}/blobs/{sha256}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<LogFile>,
}

/// One log a run left, as reported: its bytes are a blob of the job, like an output's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// One of [`LOG_NAMES`].
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256, 64 lowercase hex.
    pub sha256: String,
}

/// The logs a run may report: the job's own output (secrets masked, capped) and its egress
/// record.
pub const LOG_NAMES: [&str; 2] = ["job.log", "egress.log"];

impl ResultReport {
    /// The outputs the reported `result.json` lists (`result.outputs`, none when absent), each
    /// with a well-formed sha256 and a path listed once: what the runner uploads and the
    /// coordinator holds it to.
    pub fn outputs(&self) -> Result<Vec<crate::OutputRecord>, String> {
        let Some(list) = self.result.get("outputs") else {
            return Ok(Vec::new());
        };
        let list = list.as_array().ok_or("result.outputs: must be a list")?;
        let mut outputs: Vec<crate::OutputRecord> = Vec::with_capacity(list.len());
        for (i, o) in list.iter().enumerate() {
            let record = crate::OutputRecord::deserialize(o)
                .map_err(|e| format!("result.outputs[{i}]: {e}"))?;
            crate::check_sha256(&record.sha256)
                .map_err(|e| format!("result.outputs[{i}].sha256: {e}"))?;
            // A path names one output: listed twice, which would a download get?
            if outputs.iter().any(|seen| seen.path == record.path) {
                return Err(format!(
                    "result.outputs[{i}].path: {:?} is listed twice",
                    record.path
                ));
            }
            outputs.push(record);
        }
        Ok(outputs)
    }

    /// Checks the report's log list: known names, each once, well-formed digests.
    pub fn check_logs(&self) -> Result<(), String> {
        let mut seen = Vec::new();
        for (i, log) in self.logs.iter().enumerate() {
            if !LOG_NAMES.contains(&log.name.as_str()) {
                return Err(format!(
                    "logs[{i}].name: {:?} is not one of {LOG_NAMES:?}",
                    log.name
                ));
            }
            if seen.contains(&log.name.as_str()) {
                return Err(format!("logs[{i}].name: {:?} is listed twice", log.name));
            }
            seen.push(log.name.as_str());
            crate::check_sha256(&log.sha256).map_err(|e| format!("logs[{i}].sha256: {e}"))?;
        }
        Ok(())
    }
}

/// Where a job is in its life, as the coordinator records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// Waiting for a runner.
    Queued,
    /// Leased to a runner, lease not yet over.
    Leased,
    /// The runner reported a result.
    Finished,
    /// The lease ended with no result (the runner died or lost the coordinator).
    Lost,
}

/// `GET /v1/jobs/{id}` (operator): the job's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRecord {
    /// The job's id.
    pub job_id: String,
    /// Its state.
    pub state: JobState,
    /// Its trust level.
    pub trust: Trust,
    /// The job's name (from the spec).
    pub name: String,
    /// The runner it was leased to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_id: Option<String>,
    /// The reported result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultReport>,
    /// When the operator asked for the job to be cancelled (seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_requested_at: Option<u64>,
}

/// An error body: every non-2xx answer of the coordinator carries one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// One sentence saying what was refused and why.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_allowed_its_length_at_the_minimum_rate_rounded_up() {
        use std::time::Duration;
        assert_eq!(body_allowance(0), Duration::ZERO);
        assert_eq!(body_allowance(1), Duration::from_secs(1));
        assert_eq!(body_allowance(MIN_BODY_RATE), Duration::from_secs(1));
        // The largest result: two minutes and eight seconds.
        assert_eq!(
            body_allowance(MAX_BODY_BYTES as u64),
            Duration::from_secs(128)
        );
    }

    #[test]
    fn the_signing_input_is_pinned_and_refuses_newlines() {
        let s = signing_input(
            "POST",
            "/v1/runners/lease",
            1700000000,
            "n0nce",
            "r-1",
            "ab",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(s).unwrap(),
            "bulwark-request-v1\nPOST\n/v1/runners/lease\n1700000000\nn0nce\nr-1\nab"
        );
        assert!(signing_input("POST", "/x\nGET", 1, "n", "r", "ab").is_none());
        assert!(signing_input("POST", "/x", 1, "n\r", "r", "ab").is_none());
    }

    #[test]
    fn a_registration_token_never_shows_in_debug_output() {
        let r = RegisterRequest {
            token: "bwreg_secretsecret".into(),
            name: "build-7".into(),
            public_key: "-----BEGIN PUBLIC KEY-----".into(),
        };
        let shown = format!("{r:?}");
        assert!(!shown.contains("secretsecret"), "{shown}");
        assert!(shown.contains("build-7"), "{shown}");
    }

    #[test]
    fn a_lease_request_without_holding_is_the_old_request_and_a_bad_one_names_its_field() {
        // What runners sent before (and an empty body) ask for no offer again.
        for old in [&b""[..], b"{}", b" \n", b"{\"holding\": null}"] {
            assert_eq!(LeaseRequest::parse(old), Ok(LeaseRequest::default()));
        }
        assert_eq!(
            LeaseRequest::parse(br#"{"holding": []}"#),
            Ok(LeaseRequest {
                holding: Some(Vec::new())
            })
        );
        let two = LeaseRequest::parse(br#"{"holding": ["job-a", "job_B-9"], "later": 1}"#);
        assert_eq!(
            two.map(|r| r.holding),
            Ok(Some(vec!["job-a".to_owned(), "job_B-9".to_owned()])),
            "a field this coordinator does not know is ignored"
        );
        let refused = |body: &[u8]| LeaseRequest::parse(body).unwrap_err();
        assert!(refused(b"{").starts_with("not JSON"), "{}", refused(b"{"));
        assert!(refused(b"[]").contains("JSON object"));
        assert_eq!(
            refused(br#"{"holding": "job-a"}"#),
            "holding: must be a list of job ids"
        );
        assert_eq!(
            refused(br#"{"holding": ["job-a", 7]}"#),
            "holding[1]: must be a job id (a string)"
        );
        for bad in [
            "",
            "../etc",
            "job a",
            "job\u{e9}",
            &"j".repeat(MAX_JOB_ID_LEN + 1),
        ] {
            let body = serde_json::json!({ "holding": ["job-a", bad] }).to_string();
            let e = refused(body.as_bytes());
            assert!(e.starts_with("holding[1]: not a job id"), "{bad:?}: {e}");
        }
        let longest = "j".repeat(MAX_JOB_ID_LEN);
        let full: Vec<&str> = vec![&longest; MAX_HOLDING];
        let body = serde_json::json!({ "holding": full }).to_string();
        assert_eq!(
            LeaseRequest::parse(body.as_bytes())
                .unwrap()
                .holding
                .map(|h| h.len()),
            Some(MAX_HOLDING)
        );
        assert!(
            body.len() < 64 << 10,
            "the fullest request fits the lease route's body limit"
        );
        let over: Vec<&str> = vec!["job-a"; MAX_HOLDING + 1];
        let body = serde_json::json!({ "holding": over }).to_string();
        assert_eq!(
            refused(body.as_bytes()),
            format!(
                "holding: {} job ids, at most {MAX_HOLDING}",
                MAX_HOLDING + 1
            )
        );
        // What a runner sends, read back.
        let sent = LeaseRequest {
            holding: Some(vec!["job-1".into()]),
        };
        let body = serde_json::to_vec(&sent).unwrap();
        assert_eq!(body, br#"{"holding":["job-1"]}"#);
        assert_eq!(LeaseRequest::parse(&body), Ok(sent));
    }

    #[test]
    fn an_id_token_never_shows_in_debug_output() {
        let t = IdToken {
            token: "eyJsecret".into(),
            expires_at: 5,
        };
        assert!(!format!("{t:?}").contains("eyJsecret"));
    }
}
