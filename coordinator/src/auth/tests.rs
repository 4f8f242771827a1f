use super::*;
use crate::state::{Db, Runner, DB_NAME};
use crate::testutil::TempDir;
use p256::ecdsa::SigningKey;

/// A runner's side of a signed request: the headers for `body` sent as `method path`.
pub(crate) fn sign(
    key: &SigningKey,
    runner_id: &str,
    method: &str,
    path: &str,
    timestamp: u64,
    nonce: &str,
    body: &[u8],
) -> SignedHeaders {
    sign_digest(
        key,
        runner_id,
        method,
        path,
        timestamp,
        nonce,
        &sha256_hex(body),
    )
}

/// [`sign`] over a stated body hash (an upload signs the digest its path names).
pub(crate) fn sign_digest(
    key: &SigningKey,
    runner_id: &str,
    method: &str,
    path: &str,
    timestamp: u64,
    nonce: &str,
    body_sha256_hex: &str,
) -> SignedHeaders {
    use p256::ecdsa::signature::Signer as _;
    let message =
        signing_input(method, path, timestamp, nonce, runner_id, body_sha256_hex).unwrap();
    let signature: p256::ecdsa::Signature = key.sign(&message);
    SignedHeaders {
        runner_id: runner_id.into(),
        timestamp: timestamp.to_string(),
        nonce: nonce.into(),
        signature: base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes()),
    }
}

pub(crate) fn runner_key() -> SigningKey {
    use p256::elliptic_curve::Generate;
    SigningKey::try_generate_from_rng(&mut getrandom::SysRng).unwrap()
}

thread_local! {
    /// One key cache per test (each runs on its own thread), so that every check after a
    /// test's first goes through a cached key, as in the server.
    static KEYS: RunnerKeys = RunnerKeys::default();
}

/// [`verify_signed_request`] with the test's key cache, the runner only.
fn verify(
    db: &Mutex<Db>,
    method: &str,
    path: &str,
    h: &SignedHeaders,
    body: &[u8],
    now: u64,
) -> Result<Runner, AuthError> {
    KEYS.with(|keys| verify_signed_request(db, keys, method, path, h, body, now).map(|(r, _)| r))
}

fn setup(dir: &TempDir) -> (Mutex<Db>, SigningKey) {
    let mut db = Db::create(&dir.path().join(DB_NAME), "https://ci.example.com").unwrap();
    let key = runner_key();
    db.add_registration_token("t", u64::MAX / 2).unwrap();
    let runner = Runner {
        id: "runner-1".into(),
        name: "build-7".into(),
        public_key: keys::public_key_pem(key.verifying_key()).unwrap(),
        registered_at: 1,
        removed_at: None,
    };
    db.register_runner("t", &runner, 1).unwrap();
    (Mutex::new(db), key)
}

const NOW: u64 = 1_700_000_000;
const NONCE: &str = "AAAAAAAAAAAAAAAAAAAAAA";
const PATH: &str = "/v1/jobs/job-1/result";

#[test]
fn a_correctly_signed_request_is_accepted_once() {
    let dir = TempDir::new("auth");
    let (db, key) = setup(&dir);
    let h = sign(&key, "runner-1", "POST", PATH, NOW, NONCE, b"{}");
    let runner = verify(&db, "POST", PATH, &h, b"{}", NOW).unwrap();
    assert_eq!(runner.name, "build-7");
    let e = verify(&db, "POST", PATH, &h, b"{}", NOW + 1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "signed request refused: nonce already used (a replayed request)"
    );
}

/// A replay checked at the very edge of the time window (its `now` read before it waited for
/// the database) must still find the original's nonce, even after a later request pruned the
/// expired ones.
#[test]
fn a_replay_checked_at_the_edge_of_the_window_finds_its_nonce_after_a_later_prune() {
    let dir = TempDir::new("auth");
    let (db, key) = setup(&dir);
    let h = sign(&key, "runner-1", "POST", PATH, NOW, NONCE, b"{}");
    verify(&db, "POST", PATH, &h, b"{}", NOW).unwrap();
    let edge = NOW + MAX_CLOCK_SKEW_SECS;
    let later = sign(
        &key,
        "runner-1",
        "POST",
        PATH,
        edge + 1,
        "CCCCCCCCCCCCCCCCCCCC",
        b"{}",
    );
    verify(&db, "POST", PATH, &later, b"{}", edge + 1).unwrap();
    let e = verify(&db, "POST", PATH, &h, b"{}", edge).unwrap_err();
    assert_eq!(
        e.to_string(),
        "signed request refused: nonce already used (a replayed request)"
    );
}

#[test]
fn a_timestamp_more_than_five_minutes_off_is_refused_either_way() {
    let dir = TempDir::new("auth");
    let (db, key) = setup(&dir);
    for ts in [NOW - 301, NOW + 301] {
        let h = sign(&key, "runner-1", "POST", PATH, ts, NONCE, b"");
        let e = verify(&db, "POST", PATH, &h, b"", NOW).unwrap_err();
        assert!(matches!(e, AuthError::ClockSkew { skew: 301, .. }), "{e}");
    }
    for ts in [NOW - 300, NOW + 300] {
        let nonce = format!("{NONCE}{ts}");
        let h = sign(&key, "runner-1", "POST", PATH, ts, &nonce, b"");
        verify(&db, "POST", PATH, &h, b"", NOW).unwrap();
    }
    let mut h = sign(&key, "runner-1", "POST", PATH, NOW, NONCE, b"");
    h.timestamp = "soon".into();
    assert!(matches!(
        verify(&db, "POST", PATH, &h, b"", NOW),
        Err(AuthError::Timestamp)
    ));
}

#[test]
fn a_signature_by_another_key_is_refused_and_does_not_burn_the_nonce() {
    let dir = TempDir::new("auth");
    let (db, key) = setup(&dir);
    let h = sign(&runner_key(), "runner-1", "POST", PATH, NOW, NONCE, b"");
    let e = verify(&db, "POST", PATH, &h, b"", NOW).unwrap_err();
    assert_eq!(
        e.to_string(),
        "signed request refused: the signature does not verify for runner runner-1"
    );
    assert!(!e.to_string().contains(&h.signature));
    let h = sign(&key, "runner-1", "POST", PATH, NOW, NONCE, b"");
    verify(&db, "POST", PATH, &h, b"", NOW).unwrap();
}

#[test]
fn a_tampered_body_path_method_timestamp_or_signature_is_refused() {
    let dir = TempDir::new("auth");
    let (db, key) = setup(&dir);
    let h = sign(&key, "runner-1", "POST", PATH, NOW, NONCE, br#"{"a":1}"#);
    let refused = |r: Result<Runner, AuthError>| matches!(r, Err(AuthError::Signature { .. }));
    assert!(refused(verify(&db, "POST", PATH, &h, br#"{"a":2}"#, NOW)));
    assert!(refused(verify(
        &db,
        "POST",
        "/v1/jobs/job-2/result",
        &h,
        br#"{"a":1}"#,
        NOW
    )));
    assert!(refused(verify(&db, "PUT", PATH, &h, br#"{"a":1}"#, NOW)));
    let mut later = h.clone();
    later.timestamp = (NOW + 1).to_string();
    assert!(refused(verify(
        &db,
        "POST",
        PATH,
        &later,
        br#"{"a":1}"#,
        NOW
    )));
    let mut garbage = h.clone();
    garbage.signature = "not base64!".into();
    assert!(refused(verify(
        &db,
        "POST",
        PATH,
        &garbage,
        br#"{"a":1}"#,
        NOW
    )));
}

#[test]
fn an_unknown_or_removed_runner_is_refused() {
    let dir = TempDir::new("auth");
    let (db, key) = setup(&dir);
    let h = sign(&key, "runner-2", "POST", PATH, NOW, NONCE, b"");
    let e = verify(&db, "POST", PATH, &h, b"", NOW).unwrap_err();
    assert_eq!(
        e.to_string(),
        "signed request refused: runner runner-2 is unknown or removed"
    );
    lock(&db).remove_runner("runner-1", NOW).unwrap();
    let h = sign(&key, "runner-1", "POST", PATH, NOW, NONCE, b"");
    assert!(matches!(
        verify(&db, "POST", PATH, &h, b"", NOW),
        Err(AuthError::UnknownRunner { .. })
    ));
}

#[test]
fn a_nonce_must_be_16_to_64_base64url_characters() {
    let dir = TempDir::new("auth");
    let (db, key) = setup(&dir);
    for nonce in [
        "A".repeat(15),
        "A".repeat(65),
        format!("{}+/", "A".repeat(20)),
    ] {
        let h = sign(&key, "runner-1", "POST", PATH, NOW, &nonce, b"");
        assert!(
            matches!(
                verify(&db, "POST", PATH, &h, b"", NOW),
                Err(AuthError::Nonce)
            ),
            "{nonce}"
        );
    }
    for nonce in ["A".repeat(16), "a-_".repeat(21)] {
        let h = sign(&key, "runner-1", "POST", PATH, NOW, &nonce, b"");
        verify(&db, "POST", PATH, &h, b"", NOW).unwrap();
    }
}

#[test]
fn the_admin_token_is_checked_whole_and_never_shown() {
    let text = AdminToken::generate().unwrap();
    assert!(text.starts_with(ADMIN_TOKEN_PREFIX) && text.len() == 6 + 43);
    let admin = AdminToken::from_text(&format!("{}\n", text.as_str())).unwrap();
    assert!(admin
        .check_authorization(Some(&format!("Bearer {}", text.as_str())))
        .is_ok());
    assert!(admin.check_authorization(Some(text.as_str())).is_err());
    assert!(admin
        .check_authorization(Some(&format!("Bearer {}", &text[..text.len() - 1])))
        .is_err());
    assert!(admin.check_authorization(Some("Bearer ")).is_err());
    assert!(admin.check_authorization(None).is_err());
    assert!(!format!("{admin:?}").contains(&text[6..]));
}

#[test]
fn registration_tokens_are_prefixed_random_and_stored_as_their_hash() {
    let a = generate_registration_token().unwrap();
    let b = generate_registration_token().unwrap();
    assert!(a.starts_with("bwreg_") && a.len() == 6 + 43);
    assert_ne!(a.as_str(), b.as_str());
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn an_empty_or_short_admin_token_file_is_refused_not_matched_by_an_empty_bearer() {
    // A truncated admin.token must not make `Authorization: Bearer ` an admin.
    for text in ["", "\n", "  \t\n", "bwadm_", "bwadm_short\n"] {
        assert!(AdminToken::from_text(text).is_err(), "{text:?}");
    }
    let text = AdminToken::generate().unwrap();
    assert!(AdminToken::from_text(&format!("{}\n", text.as_str())).is_ok());
}

#[test]
fn signatures_are_checked_off_the_database_lock_and_a_removed_runner_is_refused_though_cached() {
    let dir = TempDir::new("auth");
    let (db, key) = setup(&dir);
    let keys = RunnerKeys::default();
    // The first request reads the runner's key.
    let h = sign(&key, "runner-1", "POST", PATH, NOW, NONCE, b"");
    let (runner, guard) = verify_signed_request(&db, &keys, "POST", PATH, &h, b"", NOW).unwrap();
    drop(guard);
    assert_eq!(runner.id, "runner-1");
    // While the database is held (a long transaction, say), a forged request is still
    // refused: its signature is checked without the lock.
    let held = lock(&db);
    let forged = sign(
        &runner_key(),
        "runner-1",
        "POST",
        PATH,
        NOW,
        &"B".repeat(22),
        b"",
    );
    let answer = std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        let (db, keys, forged) = (&db, &keys, &forged);
        s.spawn(move || {
            let r = verify_signed_request(db, keys, "POST", PATH, forged, b"", NOW).map(|_| ());
            let _ = tx.send(r);
        });
        let answer = rx.recv_timeout(std::time::Duration::from_secs(10));
        drop(held);
        answer
    });
    assert!(
        matches!(answer, Ok(Err(AuthError::Signature { .. }))),
        "{answer:?}"
    );
    // Removed by the operator (another process): refused, though its key is cached.
    lock(&db).remove_runner("runner-1", NOW).unwrap();
    let h = sign(&key, "runner-1", "POST", PATH, NOW, &"C".repeat(22), b"");
    assert!(matches!(
        verify_signed_request(&db, &keys, "POST", PATH, &h, b"", NOW),
        Err(AuthError::UnknownRunner { .. })
    ));
    assert!(
        keys.lock().is_empty(),
        "a removed runner's key is forgotten"
    );
}

/// Each refusal the checks before the body make is the one the full check makes of the same
/// request, with and without the body's digest named; a request they pass is left whole to
/// the full check (its nonce not used).
#[test]
fn the_checks_before_the_body_refuse_as_the_full_check_does_and_use_no_nonce() {
    let dir = TempDir::new("auth");
    let (db, key) = setup(&dir);
    let digest = sha256_hex(b"{}");
    let before = |path: &str, h: &SignedHeaders, digest: Option<&str>| {
        KEYS.with(|keys| check_before_body(&db, keys, "POST", path, h, digest, NOW))
    };
    let stranger = runner_key();
    let refused = [
        (
            PATH.to_owned() + "?x=1",
            sign(&key, "runner-1", "POST", PATH, NOW, NONCE, b"{}"),
        ),
        (
            PATH.to_owned(),
            sign(&key, "runner-1", "POST", PATH, NOW - 301, NONCE, b"{}"),
        ),
        (
            PATH.to_owned(),
            SignedHeaders {
                timestamp: "soon".into(),
                ..sign(&key, "runner-1", "POST", PATH, NOW, NONCE, b"{}")
            },
        ),
        (
            PATH.to_owned(),
            sign(&key, "runner-1", "POST", PATH, NOW, "short", b"{}"),
        ),
        (
            PATH.to_owned(),
            sign(&stranger, "runner-2", "POST", PATH, NOW, NONCE, b"{}"),
        ),
    ];
    for (path, h) in &refused {
        let full = verify(&db, "POST", path, h, b"{}", NOW)
            .unwrap_err()
            .to_string();
        for named in [None, Some(digest.as_str())] {
            let early = before(path, h, named).unwrap_err().to_string();
            assert_eq!(early, full, "{named:?}");
        }
    }
    // A registered runner's id with another key's signature: refused before the body only
    // when the digest is named (the signature can then be checked), as the full check does.
    let forged = sign(&stranger, "runner-1", "POST", PATH, NOW, NONCE, b"{}");
    let full = verify(&db, "POST", PATH, &forged, b"{}", NOW)
        .unwrap_err()
        .to_string();
    assert_eq!(
        full,
        "signed request refused: the signature does not verify for runner runner-1"
    );
    assert_eq!(
        before(PATH, &forged, Some(&digest))
            .unwrap_err()
            .to_string(),
        full
    );
    before(PATH, &forged, None).unwrap();
    // Signed over another body than the digest named: refused.
    let other = sign(&key, "runner-1", "POST", PATH, NOW, NONCE, b"{\"x\":1}");
    assert!(matches!(
        before(PATH, &other, Some(&digest)),
        Err(AuthError::Signature { .. })
    ));
    // Passed, with and without the digest, and neither used the nonce.
    let good = sign(&key, "runner-1", "POST", PATH, NOW, NONCE, b"{}");
    before(PATH, &good, None).unwrap();
    before(PATH, &good, Some(&digest)).unwrap();
    before(PATH, &good, Some(&digest)).unwrap();
    verify(&db, "POST", PATH, &good, b"{}", NOW).unwrap();
    // Once the full check recorded it, a copy naming its digest is refused before its body,
    // as the full check refuses it.
    let full = verify(&db, "POST", PATH, &good, b"{}", NOW)
        .unwrap_err()
        .to_string();
    assert_eq!(
        full,
        "signed request refused: nonce already used (a replayed request)"
    );
    assert_eq!(
        before(PATH, &good, Some(&digest)).unwrap_err().to_string(),
        full
    );
    // Removed since: refused before the body once its key is no longer cached (the full
    // check, which reads its standing under the lock, forgets it).
    lock(&db).remove_runner("runner-1", NOW).unwrap();
    let again = sign(
        &key,
        "runner-1",
        "POST",
        PATH,
        NOW,
        "BBBBBBBBBBBBBBBBBBBB",
        b"{}",
    );
    let full = verify(&db, "POST", PATH, &again, b"{}", NOW)
        .unwrap_err()
        .to_string();
    assert_eq!(before(PATH, &again, None).unwrap_err().to_string(), full);
    assert_eq!(
        before(PATH, &again, Some(&digest)).unwrap_err().to_string(),
        full
    );
}

#[test]
fn a_named_body_digest_must_be_lowercase_hex_and_the_body_must_hash_to_it() {
    let digest = sha256_hex(b"{}");
    let read = |v: Option<&str>| read_body_digest(|_| v).map(|d| d.map(|d| d == digest));
    assert_eq!(read(None).unwrap(), None);
    assert_eq!(read(Some(&digest)).unwrap(), Some(true));
    let upper = digest.to_uppercase();
    let longer = format!("{digest}0");
    for bad in ["", "abc", &upper, &longer, &digest[1..]] {
        assert_eq!(
            read(Some(bad)).unwrap_err().to_string(),
            "signed request refused: header bulwark-content-sha256 missing or not valid",
            "{bad:?}"
        );
    }
    assert_eq!(check_body_digest(None, b"{}").unwrap(), digest);
    assert_eq!(check_body_digest(Some(&digest), b"{}").unwrap(), digest);
    assert_eq!(
        check_body_digest(Some(&digest), b"{} ")
            .unwrap_err()
            .to_string(),
        "signed request refused: the body does not hash to header bulwark-content-sha256 \
         (altered on the way?)"
    );
}

/// A request's timestamp is judged against when its head arrived, not when its body had
/// arrived: a runner whose clock passed the check before its body (a wait for room to read
/// it, a slow link) is not refused after it. Never by a moment longer ago than
/// [`MAX_REQUEST_AGE_SECS`], and its nonce is still remembered when a replay of it, judged by
/// its own arrival at the edge of the window, is checked that long after.
#[test]
fn a_request_is_judged_by_when_its_head_arrived_and_its_nonce_outlives_any_replay() {
    let dir = TempDir::new("auth");
    let (db, key) = setup(&dir);
    let at = |arrived, now| RequestTime { arrived, now };
    let check = |h: &SignedHeaders, at: RequestTime| {
        KEYS.with(|keys| {
            verify_signed_request_for_digest(&db, keys, "POST", PATH, h, &sha256_hex(b"{}"), at)
                .map(|(r, _)| r)
        })
    };
    // 250 s behind when its head arrived, 350 s when its body had: accepted.
    let behind = sign(&key, "runner-1", "POST", PATH, NOW - 250, NONCE, b"{}");
    check(&behind, at(NOW, NOW + 100)).unwrap();
    // A head that arrived longer ago than MAX_REQUEST_AGE_SECS is judged by that bound.
    let stale = sign(
        &key,
        "runner-1",
        "POST",
        PATH,
        NOW - 250,
        "BBBBBBBBBBBBBBBBBBBB",
        b"{}",
    );
    let e = check(&stale, at(NOW, NOW + MAX_REQUEST_AGE_SECS + 60)).unwrap_err();
    assert!(matches!(e, AuthError::ClockSkew { skew: 310, .. }), "{e}");
    // An original, then a replay of it whose head arrived at the edge of the window and whose
    // check comes the longest allowed after, once a later request pruned the expired nonces.
    let original = sign(
        &key,
        "runner-1",
        "POST",
        PATH,
        NOW,
        "CCCCCCCCCCCCCCCCCCCC",
        b"{}",
    );
    check(&original, at(NOW, NOW)).unwrap();
    let edge = NOW + MAX_CLOCK_SKEW_SECS;
    let last = edge + MAX_REQUEST_AGE_SECS;
    let later = sign(
        &key,
        "runner-1",
        "POST",
        PATH,
        last,
        "DDDDDDDDDDDDDDDDDDDD",
        b"{}",
    );
    check(&later, at(last, last)).unwrap();
    let e = check(&original, at(edge, last)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "signed request refused: nonce already used (a replayed request)"
    );
}
