//! Job identity: the issuer's JWK and discovery document, and the job tokens (JWT, ES256).
//!
//! A token says "this job, from this repository at this commit, trusted, running on this
//! runner now", for a cloud's federation (AWS `AssumeRoleWithWebIdentity`, GCP workload
//! identity, Vault's JWT auth) to trade for short-lived credentials. Every claim comes from the
//! coordinator's own records (the spec and trust as submitted, the runner as registered); the
//! runner chooses only the audience.
//!
//! Written by hand rather than with a JWT library: minting is a header, a claim set and one
//! ECDSA signature, and the parts that matter (the `kid`, the `r || s` signature encoding,
//! the claim names) are pinned by tests and checked by an independent verifier (PyJWT, see
//! `tests/interop/verify_jwt.py`). The decoder here exists for those tests and refuses
//! anything but the exact shape this module writes.

use base64::Engine;
use p256::ecdsa::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keys::{IssuerKey, KeyError};
use crate::state::{Job, Runner};

/// Longest life of a job token, in seconds (it is also cut at the lease's end).
pub const MAX_TOKEN_LIFETIME_SECS: u64 = 600;

/// Longest audience accepted.
pub const MAX_AUDIENCE_LEN: usize = 256;

/// The claims a job token carries, in the order written.
pub const CLAIMS_SUPPORTED: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "iat",
    "nbf",
    "exp",
    "jti",
    "repository",
    "ref",
    "commit",
    "workflow",
    "trust",
    "job_id",
    "runner_id",
    "runner_name",
];

/// What went wrong minting or reading a token.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The audience is empty, too long or has control characters.
    #[error("audience: must be 1 to {MAX_AUDIENCE_LEN} characters with no control characters")]
    Audience,
    /// The job's source has neither a git repository nor a url (the submit check prevents it).
    #[error("job {job_id}: its source names no repository or url")]
    Source {
        /// The job.
        job_id: String,
    },
    /// Serialising the header or claims failed.
    #[error("encoding the token's claims")]
    Encode(#[source] serde_json::Error),
    /// Signing failed.
    #[error("signing the job token")]
    Sign(#[source] KeyError),
    /// A token that does not have the shape this module writes.
    #[error("token: {0}")]
    Malformed(&'static str),
    /// A token whose signature does not verify.
    #[error("token: the signature does not verify")]
    Signature,
}

fn b64url() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// The issuer key as a JWK (RFC 7517), with its `kid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// `EC`.
    pub kty: String,
    /// `P-256`.
    pub crv: String,
    /// The x coordinate, 32 bytes, base64url.
    pub x: String,
    /// The y coordinate, 32 bytes, base64url.
    pub y: String,
    /// The RFC 7638 thumbprint.
    pub kid: String,
    /// `ES256`.
    pub alg: String,
    /// `sig`.
    #[serde(rename = "use")]
    pub use_: String,
}

/// The coordinates of `key`, base64url.
fn coordinates(key: &VerifyingKey) -> (String, String) {
    let point = key.to_sec1_point(false);
    // An uncompressed point of a valid key always has both coordinates.
    let x = point.x().map(|x| b64url().encode(x)).unwrap_or_default();
    let y = point.y().map(|y| b64url().encode(y)).unwrap_or_default();
    (x, y)
}

/// The RFC 7638 JWK thumbprint of `key`: the sha256, base64url, of the required members in
/// lexicographic order with no whitespace.
pub fn thumbprint(key: &VerifyingKey) -> String {
    let (x, y) = coordinates(key);
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    b64url().encode(Sha256::digest(canonical.as_bytes()))
}

/// `key` as a JWK.
pub fn jwk(key: &VerifyingKey) -> Jwk {
    let (x, y) = coordinates(key);
    Jwk {
        kty: "EC".into(),
        crv: "P-256".into(),
        x,
        y,
        kid: thumbprint(key),
        alg: "ES256".into(),
        use_: "sig".into(),
    }
}

/// `/.well-known/jwks.json`.
pub fn jwks(key: &VerifyingKey) -> serde_json::Value {
    serde_json::json!({ "keys": [jwk(key)] })
}

/// `/.well-known/openid-configuration` for `issuer`.
pub fn discovery(issuer: &str) -> serde_json::Value {
    serde_json::json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "id_token_signing_alg_values_supported": ["ES256"],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "claims_supported": CLAIMS_SUPPORTED,
    })
}

/// Checks a requested audience: 1 to [`MAX_AUDIENCE_LEN`] characters, none a control character.
pub fn check_audience(audience: &str) -> Result<(), OidcError> {
    let ok = !audience.is_empty()
        && audience.chars().count() <= MAX_AUDIENCE_LEN
        && !audience.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(OidcError::Audience)
    }
}

/// A job token's claims (docs/control-plane.md, "Job identity").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The issuer URL.
    pub iss: String,
    /// `repo:<repository>:ref:<ref>:trust:trusted`.
    pub sub: String,
    /// The requested audience.
    pub aud: String,
    /// Issued at.
    pub iat: u64,
    /// Not before (= `iat`).
    pub nbf: u64,
    /// Expiry.
    pub exp: u64,
    /// A random id.
    pub jti: String,
    /// The git repository, or the source archive's url (credentials removed).
    pub repository: String,
    /// The ref, when the spec gives one.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    /// The commit, or the source archive's sha256.
    pub commit: String,
    /// The job's name.
    pub workflow: String,
    /// Always `trusted`.
    pub trust: String,
    /// The job's id.
    pub job_id: String,
    /// The runner's id.
    pub runner_id: String,
    /// The runner's name.
    pub runner_name: String,
}

impl Claims {
    /// The claims for `job` running on `runner`, for `audience`, issued at `now` and expiring
    /// at the earlier of `now + MAX_TOKEN_LIFETIME_SECS` and `lease_end`. `jti` is random.
    pub fn for_job(
        issuer: &str,
        job: &Job,
        runner: &Runner,
        audience: &str,
        now: u64,
        lease_end: u64,
        jti: String,
    ) -> Result<Claims, OidcError> {
        check_audience(audience)?;
        let source = job.spec.source.clone().unwrap_or_default();
        let (repository, r#ref, commit) = match (&source.git, &source.url) {
            (Some(git), _) => (git.clone(), source.r#ref.clone(), source.commit.clone()),
            (None, Some(url)) => (url.clone(), None, source.sha256.clone()),
            (None, None) => (String::new(), None, None),
        };
        let commit = commit.ok_or_else(|| OidcError::Source {
            job_id: job.id.clone(),
        })?;
        if repository.is_empty() {
            return Err(OidcError::Source {
                job_id: job.id.clone(),
            });
        }
        // A URL with credentials in it would hand them to every service the token is shown to.
        let repository = bulwark_protocol::redact_url(&repository);
        let exp = now.saturating_add(MAX_TOKEN_LIFETIME_SECS).min(lease_end);
        Ok(Claims {
            iss: issuer.to_owned(),
            sub: format!(
                "repo:{repository}:ref:{}:trust:trusted",
                r#ref.as_deref().unwrap_or("")
            ),
            aud: audience.to_owned(),
            iat: now,
            nbf: now,
            exp,
            jti,
            repository,
            r#ref,
            commit,
            workflow: job.name.clone(),
            trust: "trusted".into(),
            job_id: job.id.clone(),
            runner_id: runner.id.clone(),
            runner_name: runner.name.clone(),
        })
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    typ: String,
    kid: String,
}

/// Signs `claims` as a compact JWS: `base64url(header).base64url(claims).base64url(r || s)`.
pub fn mint(key: &IssuerKey, claims: &Claims) -> Result<String, OidcError> {
    let header = Header {
        alg: "ES256".into(),
        typ: "JWT".into(),
        kid: thumbprint(&key.verifying_key()),
    };
    let header = serde_json::to_vec(&header).map_err(OidcError::Encode)?;
    let claims = serde_json::to_vec(claims).map_err(OidcError::Encode)?;
    let mut token = b64url().encode(header);
    token.push('.');
    token.push_str(&b64url().encode(claims));
    let signature = key.sign_jws(token.as_bytes()).map_err(OidcError::Sign)?;
    token.push('.');
    token.push_str(&b64url().encode(signature));
    Ok(token)
}

/// Verifies a token this module minted with the key `key` and returns its claims: header
/// exactly `{alg: ES256, typ: JWT, kid: thumbprint(key)}`, a 64-byte `r || s` signature.
/// Times are not checked (the caller compares `exp` with its clock).
pub fn verify(token: &str, key: &VerifyingKey) -> Result<Claims, OidcError> {
    use p256::ecdsa::signature::Verifier as _;
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(OidcError::Malformed("not three dot-separated parts"));
    };
    let decode = |part: &str| {
        b64url()
            .decode(part)
            .map_err(|_| OidcError::Malformed("a part is not base64url without padding"))
    };
    let header: Header = serde_json::from_slice(&decode(h)?)
        .map_err(|_| OidcError::Malformed("the header is not {alg, typ, kid}"))?;
    if header.alg != "ES256" || header.typ != "JWT" || header.kid != thumbprint(key) {
        return Err(OidcError::Malformed(
            "the header is not ES256, JWT and this key's kid",
        ));
    }
    let signature = p256::ecdsa::Signature::from_slice(&decode(s)?)
        .map_err(|_| OidcError::Malformed("the signature is not 64 bytes r || s"))?;
    let signed = &token[..h.len() + 1 + c.len()];
    key.verify(signed.as_bytes(), &signature)
        .map_err(|_| OidcError::Signature)?;
    serde_json::from_slice(&decode(c)?).map_err(|_| OidcError::Malformed("the claims do not parse"))
}

#[cfg(test)]
mod tests;
