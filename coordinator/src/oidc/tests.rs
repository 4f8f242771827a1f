use super::*;
use crate::state::tests::spec;
use bulwark_protocol::control::JobState;
use bulwark_protocol::Trust;

/// The ES256 key of RFC 7515 appendix A.3 (`d` as hex).
const RFC7515_D: &str = "8e9b109e719098bf980487df1f5d77e9cb29606ebed2263b5f57c213df84f4b2";

fn rfc_key() -> IssuerKey {
    let d: Vec<u8> = (0..RFC7515_D.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&RFC7515_D[i..i + 2], 16).unwrap())
        .collect();
    IssuerKey::from_scalar(&d).unwrap()
}

fn job() -> Job {
    Job {
        id: "job-1".into(),
        name: "build".into(),
        trust: Trust::Trusted,
        spec: spec(None),
        state: JobState::Leased,
        runner_id: Some("runner-1".into()),
        submitted_at: 1,
        lease_expires_at: Some(10_000),
        cancel_requested_at: None,
        result: None,
    }
}

fn runner() -> Runner {
    Runner {
        id: "runner-1".into(),
        name: "build-7".into(),
        public_key: String::new(),
        registered_at: 1,
        removed_at: None,
    }
}

#[test]
fn the_jwk_and_thumbprint_of_the_rfc_7515_example_key_are_pinned() {
    let key = rfc_key().verifying_key();
    let jwk = jwk(&key);
    assert_eq!(jwk.x, "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU");
    assert_eq!(jwk.y, "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0");
    // sha256 of {"crv":"P-256","kty":"EC","x":"f83O…","y":"x_FE…"}, computed independently
    // (Python hashlib) from the RFC 7638 rule.
    assert_eq!(jwk.kid, "oKIywvGUpTVTyxMQ3bwIIeQUudfr_CkLMjCE19ECD-U");
    assert_eq!(
        serde_json::to_value(&jwk).unwrap(),
        serde_json::json!({
            "kty": "EC", "crv": "P-256",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
            "kid": "oKIywvGUpTVTyxMQ3bwIIeQUudfr_CkLMjCE19ECD-U",
            "alg": "ES256", "use": "sig"
        })
    );
    assert_eq!(jwks(&key)["keys"][0], serde_json::to_value(&jwk).unwrap());
}

#[test]
fn a_minted_token_verifies_and_carries_exactly_the_documented_claims() {
    let key = rfc_key();
    let claims = Claims::for_job(
        "https://ci.example.com",
        &job(),
        &runner(),
        "sts.amazonaws.com",
        1000,
        10_000,
        "jti-1".into(),
    )
    .unwrap();
    let token = mint(&key, &claims).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: serde_json::Value =
        serde_json::from_slice(&b64url().decode(parts[0]).unwrap()).unwrap();
    assert_eq!(
        header,
        serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": "oKIywvGUpTVTyxMQ3bwIIeQUudfr_CkLMjCE19ECD-U"})
    );
    assert_eq!(b64url().decode(parts[2]).unwrap().len(), 64, "JWS r || s");
    let body: serde_json::Value =
        serde_json::from_slice(&b64url().decode(parts[1]).unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "iss": "https://ci.example.com",
            "sub": "repo:https://git.example.com/acme/app.git:ref:refs/heads/main:trust:trusted",
            "aud": "sts.amazonaws.com",
            "iat": 1000, "nbf": 1000, "exp": 1600,
            "jti": "jti-1",
            "repository": "https://git.example.com/acme/app.git",
            "ref": "refs/heads/main",
            "commit": "0123456789abcdef0123456789abcdef01234567",
            "workflow": "build",
            "trust": "trusted",
            "job_id": "job-1",
            "runner_id": "runner-1",
            "runner_name": "build-7"
        })
    );
    let names: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut supported = CLAIMS_SUPPORTED.to_vec();
    supported.sort_unstable();
    let mut names_sorted = names.clone();
    names_sorted.sort_unstable();
    assert_eq!(names_sorted, supported);
    assert_eq!(verify(&token, &key.verifying_key()).unwrap(), claims);
}

#[test]
fn a_tampered_token_or_another_key_does_not_verify() {
    let key = rfc_key();
    let claims = Claims::for_job(
        "https://ci.example.com",
        &job(),
        &runner(),
        "aud",
        1000,
        10_000,
        "j".into(),
    )
    .unwrap();
    let token = mint(&key, &claims).unwrap();
    let other = IssuerKey::generate().unwrap().verifying_key();
    assert!(verify(&token, &other).is_err());
    let mut forged = claims.clone();
    forged.trust = "trusted".into();
    forged.aud = "other".into();
    let parts: Vec<&str> = token.split('.').collect();
    let forged_token = format!(
        "{}.{}.{}",
        parts[0],
        b64url().encode(serde_json::to_vec(&forged).unwrap()),
        parts[2]
    );
    assert!(matches!(
        verify(&forged_token, &key.verifying_key()),
        Err(OidcError::Signature)
    ));
    assert!(verify(&format!("{token}.x"), &key.verifying_key()).is_err());
}

#[test]
fn a_token_lives_ten_minutes_at_most_and_never_past_the_lease() {
    let at = |now, lease_end| {
        Claims::for_job(
            "https://i",
            &job(),
            &runner(),
            "a",
            now,
            lease_end,
            "j".into(),
        )
        .unwrap()
        .exp
    };
    assert_eq!(at(1000, 100_000), 1600);
    assert_eq!(at(1000, 1200), 1200);
}

#[test]
fn a_url_source_names_the_url_without_credentials_and_its_sha256() {
    let mut job = job();
    job.spec.source = Some(bulwark_protocol::SourceSpec {
        url: Some("https://user:secret@dl.example.com/app.tar.gz".into()),
        sha256: Some("ab".repeat(32)),
        ..Default::default()
    });
    let claims = Claims::for_job("https://i", &job, &runner(), "a", 1, 100, "j".into()).unwrap();
    assert_eq!(claims.repository, "https://dl.example.com/app.tar.gz");
    assert_eq!(claims.r#ref, None);
    assert_eq!(claims.commit, "ab".repeat(32));
    assert_eq!(
        claims.sub,
        "repo:https://dl.example.com/app.tar.gz:ref::trust:trusted"
    );
    assert!(!serde_json::to_string(&claims).unwrap().contains("secret"));
}

#[test]
fn an_audience_must_be_short_printable_and_present() {
    assert!(check_audience("sts.amazonaws.com").is_ok());
    assert!(check_audience(&"a".repeat(256)).is_ok());
    assert!(check_audience(&"a".repeat(257)).is_err());
    assert!(check_audience("").is_err());
    assert!(check_audience("a\nb").is_err());
    assert!(check_audience("a\u{7f}").is_err());
}

#[test]
fn the_discovery_document_points_at_the_jwks_under_the_issuer() {
    let d = discovery("https://ci.example.com/bulwark");
    assert_eq!(d["issuer"], "https://ci.example.com/bulwark");
    assert_eq!(
        d["jwks_uri"],
        "https://ci.example.com/bulwark/.well-known/jwks.json"
    );
    assert_eq!(
        d["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256"])
    );
    assert_eq!(
        d["response_types_supported"],
        serde_json::json!(["id_token"])
    );
    assert_eq!(d["subject_types_supported"], serde_json::json!(["public"]));
    assert_eq!(d["claims_supported"].as_array().unwrap().len(), 15);
}
