//! DSSE (Dead Simple Signing Envelope) v1: the envelope around the in-toto Statement.
//!
//! What is signed is the PAE (pre-authentication encoding) of the payload type and the payload
//! bytes, never the JSON of the envelope: `"DSSEv1" SP len(type) SP type SP len(payload) SP
//! payload`, lengths in bytes as ASCII decimal. Verification checks the signature over the PAE
//! of the exact payload bytes in the envelope, and only then are those same bytes parsed, so
//! what was verified is what is read.
//!
//! Wire rules the independent verifiers enforce and we follow when writing: standard base64
//! with padding, a non-empty `keyid` on every signature, P-256 signatures in ASN.1 DER.
//!
//! Reading, the `keyid` is an unauthenticated hint (DSSE makes it optional and leaves it
//! outside the signature), used as the DSSE and Sigstore verifiers use it: to pick the key,
//! never to trust one. A non-empty key id naming none of the trusted keys is not checked at
//! all (a foreign signer's); one naming a trusted key is checked with that key only; an empty
//! one with every trusted key. Alternative rejected: checking every signature with every key
//! regardless of its key id (what this module did first) makes each envelope cost
//! signatures × keys checks, and a file of replayed envelopes minutes of CPU.
//!
//! What a file costs is bounded by [`Checker`], one per file: a check already made in that
//! file (same payload type, payload, signature and key) is not made again, and an envelope
//! first looks for such a verified check of its own signatures, so a replayed envelope costs
//! no check whatever signatures are added to it for the key that signed it; a signature with
//! an empty key id is checked only for the keys not yet found to sign its envelope; and past
//! [`MAX_FAILED_SIGNATURES`] failed signatures (each naming a trusted key, or with an empty
//! key id beyond the first in an envelope whose trusted signature was checked there, a foreign
//! countersigner's) the whole file is refused: the signer of a genuine file writes signatures
//! that verify. Every envelope still needs a signature of its own that verifies: a copy of a
//! genuine envelope with its signature damaged is rejected.

use anyhow::{bail, Result};
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::keys::{PublicKey, Signer};

/// The payload type of an in-toto Statement.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// A DSSE envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// base64 of the payload bytes.
    pub payload: String,
    /// Media type of the payload.
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// Signatures over the PAE.
    pub signatures: Vec<EnvelopeSignature>,
}

/// One signature in an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSignature {
    /// Which key made it.
    pub keyid: String,
    /// base64 of the signature bytes.
    pub sig: String,
}

/// The pre-authentication encoding.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    out.extend_from_slice(
        format!(
            "DSSEv1 {} {} {} ",
            payload_type.len(),
            payload_type,
            payload.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(payload);
    out
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Signs `payload` into an envelope with one signature.
pub fn sign(payload: &[u8], payload_type: &str, signer: &dyn Signer) -> Result<Envelope> {
    let sig = signer.sign(&pae(payload_type, payload))?;
    Ok(Envelope {
        payload: b64().encode(payload),
        payload_type: payload_type.to_string(),
        signatures: vec![EnvelopeSignature {
            keyid: signer.keyid().to_string(),
            sig: b64().encode(sig),
        }],
    })
}

/// Why an envelope was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// The payload type is not the one expected.
    #[error("payloadType is {found:?}, expected {expected:?}")]
    PayloadType {
        /// Seen.
        found: String,
        /// Wanted.
        expected: String,
    },
    /// Not decodable.
    #[error("{0}")]
    Malformed(String),
    /// Too many signatures in the file claimed a trusted key and verified under none: the
    /// whole file is refused (see [`Checker`]).
    #[error(
        "more than {MAX_FAILED_SIGNATURES} signatures claim a trusted key (or name no key) and \
         verify under none; the file is refused unchecked: a signer writes signatures that verify"
    )]
    Budget,
    /// No signature verified with a trusted key.
    #[error(
        "no signature verifies with a trusted key (trusted: {trusted}; signatures by: {seen}){notes}"
    )]
    NoValidSignature {
        /// Trusted key ids.
        trusted: String,
        /// Key ids on the envelope.
        seen: String,
        /// Why signatures could not be checked at all, when their encoding says so (empty,
        /// or starting with "; ").
        notes: String,
    },
}

/// What [`verify`] found: the verified payload bytes, and the key ids of the trusted keys
/// whose signatures verified (each once, in the order of `keys`).
#[derive(Debug)]
pub struct Verified {
    /// The payload, exactly the bytes that were signed.
    pub payload: Vec<u8>,
    /// Key ids of the trusted keys that signed it; never empty.
    pub signers: Vec<String>,
}

/// Verifies the envelope with any of `keys`: the payload and every trusted key that signed it.
/// One envelope on its own; the envelopes of one file share a [`Checker`].
pub fn verify(
    envelope: &Envelope,
    expected_type: &str,
    keys: &[PublicKey],
) -> Result<Verified, VerifyError> {
    Checker::new(keys).verify(envelope, expected_type)
}

/// How many of an envelope's `failed` signatures with an empty key id count toward the budget:
/// all but one when a trusted signature verified by a check made for this envelope (a foreign
/// countersigner leaves its key id empty, as cosign does), all of them otherwise (a replayed
/// envelope's are answered from the cache, and must not buy checks for free).
fn anonymous_counted(failed: usize, freshly_signed: bool) -> usize {
    if freshly_signed {
        failed.saturating_sub(1)
    } else {
        failed
    }
}

/// Most failed signatures one file may show (each naming a trusted key, or with an empty key id
/// as `anonymous_counted` counts them); past it the file is refused ([`VerifyError::Budget`]).
/// A genuine file has none.
pub const MAX_FAILED_SIGNATURES: usize = 64;

/// Checks the envelopes of one file with the trusted keys, remembering what it checked (see
/// the module docs).
#[derive(Debug)]
pub struct Checker<'k> {
    keys: &'k [PublicKey],
    /// Outcome of each check made, by sha256 of (PAE digest, signature, key id).
    checked: std::collections::HashMap<[u8; 32], bool>,
    /// Signatures that count against the budget: checked, verified under no key, and either
    /// naming a trusted key or in an envelope no trusted key signed.
    failed: usize,
    /// Signature checks actually made (not answered from `checked`).
    made: usize,
}

impl<'k> Checker<'k> {
    /// A checker for one file, with the trusted `keys`.
    pub fn new(keys: &'k [PublicKey]) -> Checker<'k> {
        Checker {
            keys,
            checked: std::collections::HashMap::new(),
            failed: 0,
            made: 0,
        }
    }

    /// What names the check of `signature` over the PAE whose sha256 is `pae_digest` with key
    /// `k` in [`Checker::checked`].
    fn check_id(&self, pae_digest: &[u8], signature: &[u8], k: usize) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(pae_digest);
        h.update((signature.len() as u64).to_be_bytes());
        h.update(signature);
        h.update(self.keys[k].keyid().as_bytes());
        h.finalize().into()
    }

    /// The outcome of that check, if this file made it already.
    fn cached(&self, pae_digest: &[u8], signature: &[u8], k: usize) -> Option<bool> {
        self.checked
            .get(&self.check_id(pae_digest, signature, k))
            .copied()
    }

    /// Checks `signature` over the PAE whose sha256 is `pae_digest` with key `k`, once per file.
    fn check(&mut self, pae_digest: &[u8], message: &[u8], signature: &[u8], k: usize) -> bool {
        let id = self.check_id(pae_digest, signature, k);
        if let Some(&ok) = self.checked.get(&id) {
            return ok;
        }
        self.made += 1;
        let ok = self.keys[k].verify(message, signature);
        self.checked.insert(id, ok);
        ok
    }

    /// How many signature checks were made (a replayed one is answered from memory).
    pub fn checks_made(&self) -> usize {
        self.made
    }

    /// Whether this file has spent its budget of failed signatures: then it is refused whole.
    pub fn over_budget(&self) -> bool {
        self.failed > MAX_FAILED_SIGNATURES
    }

    /// [`verify`], counting against this file's budget.
    pub fn verify(
        &mut self,
        envelope: &Envelope,
        expected_type: &str,
    ) -> Result<Verified, VerifyError> {
        let keys = self.keys;
        if envelope.payload_type != expected_type {
            return Err(VerifyError::PayloadType {
                found: envelope.payload_type.clone(),
                expected: expected_type.to_string(),
            });
        }
        let payload = b64()
            .decode(&envelope.payload)
            .map_err(|e| VerifyError::Malformed(format!("payload is not standard base64: {e}")))?;
        if envelope.signatures.len() > MAX_SIGNATURES {
            // Each one costs a signature check per trusted key: a file of hundreds of thousands
            // would keep a deploy gate busy for minutes before it could say no.
            return Err(VerifyError::Malformed(format!(
                "the envelope has {} signatures; at most {MAX_SIGNATURES} are checked",
                envelope.signatures.len()
            )));
        }
        let message = pae(&envelope.payload_type, &payload);
        let pae_digest = {
            use sha2::{Digest, Sha256};
            Sha256::digest(&message)
        };
        // Which trusted keys signed, each once (the same key given twice is one signer): a
        // policy that binds builders to keys asks which keys signed, not only whether one did.
        let pae_digest: [u8; 32] = pae_digest.into();
        let mut signed = vec![false; keys.len()];
        let sigs: Vec<(&EnvelopeSignature, Vec<u8>)> = envelope
            .signatures
            .iter()
            .filter_map(|s| Some((s, b64().decode(&s.sig).ok()?)))
            .collect();
        // The key id picks the keys to try: the trusted keys it names (none: another
        // signer's), or all of them for an empty one.
        let named = |s: &EnvelopeSignature, k: usize| {
            s.keyid.is_empty() || keys[k].keyids().any(|id| id == s.keyid)
        };
        // First what this file already showed to verify (a replay: free), so that a replayed
        // envelope's added signatures are not checked for a key that has signed it.
        for (s, sig) in &sigs {
            for k in (0..keys.len()).filter(|&k| named(s, k)) {
                if self.cached(&pae_digest, sig, k) == Some(true) {
                    signed[k] = true;
                }
            }
        }
        // Then signatures naming a trusted key, for the keys not yet found to sign it; then
        // those with an empty key id, for the keys still not found (a trusted countersigner
        // may leave its key id empty, as cosign does: a policy binding a builder to that key
        // asks for it).
        let (mut failed_named, mut failed_anonymous) = (0usize, 0usize);
        // Whether a trusted signature verified by a check made here (not a replay's cached
        // one): only then is one anonymous failure free, at most once per genuine payload.
        let mut freshly_signed = false;
        for anonymous in [false, true] {
            for (s, sig) in sigs.iter().filter(|(s, _)| s.keyid.is_empty() == anonymous) {
                let candidates: Vec<usize> = (0..keys.len())
                    .filter(|&k| !signed[k] && named(s, k))
                    .collect();
                if candidates.is_empty() {
                    continue;
                }
                let mut verified = false;
                for k in candidates {
                    let made = self.made;
                    if self.check(&pae_digest, &message, sig, k) {
                        signed[k] = true;
                        verified = true;
                        freshly_signed |= self.made > made;
                    }
                }
                if !verified {
                    if anonymous {
                        failed_anonymous += 1;
                    } else {
                        failed_named += 1;
                    }
                    let counted =
                        failed_named + anonymous_counted(failed_anonymous, freshly_signed);
                    if self.failed + counted > MAX_FAILED_SIGNATURES {
                        self.failed += counted;
                        return Err(VerifyError::Budget);
                    }
                }
            }
        }
        // Signatures naming a trusted key that fail count always (a signer never writes
        // one); of those with an empty key id, all but one where a trusted signature was
        // checked here (a foreign countersigner's, which fails with our keys).
        self.failed += failed_named + anonymous_counted(failed_anonymous, freshly_signed);
        if self.failed > MAX_FAILED_SIGNATURES {
            return Err(VerifyError::Budget);
        }
        let mut signers: Vec<String> = Vec::new();
        for (k, key) in keys.iter().enumerate() {
            if signed[k] {
                for id in key.keyids() {
                    if !signers.iter().any(|s| s == id) {
                        signers.push(id.to_string());
                    }
                }
            }
        }
        if !signers.is_empty() {
            return Ok(Verified { payload, signers });
        }
        Err(VerifyError::NoValidSignature {
            trusted: keys
                .iter()
                .map(|k| k.keyid().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            seen: seen_keyids(envelope),
            notes: shape_notes(envelope, keys),
        })
    }
}

/// What the encoding of each signature says about why none verified, for the usual interop
/// failures (another signer's base64 or signature format): "; signature N: ..." for each
/// signature that no trusted key could even have made, for the first [`MAX_SHOWN_KEYIDS`]
/// signatures (the same bound as the key ids listed beside them).
fn shape_notes(envelope: &Envelope, keys: &[PublicKey]) -> String {
    let mut notes = String::new();
    for (i, s) in envelope
        .signatures
        .iter()
        .enumerate()
        .take(MAX_SHOWN_KEYIDS)
    {
        let problem = match b64().decode(&s.sig) {
            Err(_) => Some("not standard padded base64".to_string()),
            Ok(sig) => {
                let problems: Vec<String> =
                    keys.iter().filter_map(|k| k.shape_problem(&sig)).collect();
                // Only when no trusted key could have made it: otherwise it simply did not
                // verify, which the message already says.
                (!problems.is_empty() && problems.len() == keys.len())
                    .then(|| problems.join(", or "))
            }
        };
        if let Some(p) = problem {
            notes.push_str(&format!("; signature {}: {p}", i + 1));
        }
    }
    notes
}

/// Most signatures one envelope may carry (DSSE allows several, one per signer).
pub const MAX_SIGNATURES: usize = 16;

/// Most signatures whose key ids a rejection lists.
const MAX_SHOWN_KEYIDS: usize = 5;
/// Most characters of one key id a rejection shows (ours are 71).
const MAX_SHOWN_KEYID_CHARS: usize = 80;

/// The key ids on an envelope, for a message: nothing signed them, so they are bounded in
/// number and length (escaping control characters is the printer's job).
fn seen_keyids(envelope: &Envelope) -> String {
    let mut shown: Vec<String> = envelope
        .signatures
        .iter()
        .take(MAX_SHOWN_KEYIDS)
        .map(|s| {
            let mut chars = s.keyid.chars();
            let head: String = chars.by_ref().take(MAX_SHOWN_KEYID_CHARS).collect();
            if chars.next().is_some() {
                format!("{head}…")
            } else {
                head
            }
        })
        .collect();
    if envelope.signatures.len() > MAX_SHOWN_KEYIDS {
        shown.push(format!(
            "and {} more",
            envelope.signatures.len() - MAX_SHOWN_KEYIDS
        ));
    }
    shown.join(", ")
}

/// Encodes an envelope as one JSON line (no trailing newline).
pub fn to_line(envelope: &Envelope) -> Result<String> {
    Ok(serde_json::to_string(envelope)?)
}

/// Decodes an envelope, refusing unknown fields.
pub fn from_json(text: &str) -> Result<Envelope> {
    match serde_json::from_str(text) {
        Ok(e) => Ok(e),
        Err(e) => bail!("not a DSSE envelope: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provenance::keys::{Algorithm, LocalKey};

    #[test]
    fn pae_matches_the_specification_example() {
        // From the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn the_key_id_picks_the_key_and_a_foreign_key_id_is_not_checked() {
        let ours = LocalKey::generate(Algorithm::P256).unwrap();
        let other = LocalKey::generate(Algorithm::P256).unwrap();
        let payload = b"{\"a\":1}";
        let env = sign(payload, IN_TOTO_PAYLOAD_TYPE, &ours).unwrap();
        let keys = [other.public(), ours.public()];
        // As Bulwark writes it: the key id is the key's own id, and it verifies.
        assert_eq!(env.signatures[0].keyid, ours.public().keyid());
        let ok = verify(&env, IN_TOTO_PAYLOAD_TYPE, &keys).unwrap();
        assert_eq!(ok.signers, [ours.keyid().to_string()]);
        // A foreign signer's signature before ours changes nothing.
        let mut countersigned = sign(payload, IN_TOTO_PAYLOAD_TYPE, &other).unwrap();
        countersigned.signatures[0].keyid = "foreign".into();
        countersigned.signatures.push(env.signatures[0].clone());
        let mut checker = Checker::new(&keys);
        let ok = checker
            .verify(&countersigned, IN_TOTO_PAYLOAD_TYPE)
            .unwrap();
        assert_eq!(ok.signers, [ours.keyid().to_string()]);
        assert_eq!(
            checker.checks_made(),
            1,
            "the foreign key id is not checked"
        );
        // An empty key id is tried with every key.
        let mut anonymous = env.clone();
        anonymous.signatures[0].keyid = String::new();
        let mut checker = Checker::new(&keys);
        let ok = checker.verify(&anonymous, IN_TOTO_PAYLOAD_TYPE).unwrap();
        assert_eq!(ok.signers, [ours.keyid().to_string()]);
        assert_eq!(checker.checks_made(), 2);
        // A key id naming one trusted key is checked with that key only: our signature
        // claiming the other key does not verify, nor does it under a key id nobody has.
        for claim in [other.keyid().to_string(), "sha256:beef".to_string()] {
            let mut wrong = env.clone();
            wrong.signatures[0].keyid = claim.clone();
            let mut checker = Checker::new(&keys);
            assert!(
                matches!(
                    checker.verify(&wrong, IN_TOTO_PAYLOAD_TYPE),
                    Err(VerifyError::NoValidSignature { .. })
                ),
                "{claim}"
            );
            assert!(checker.checks_made() <= 1, "{claim}");
        }
    }

    #[test]
    fn a_file_of_replayed_envelopes_and_failing_signatures_costs_a_bounded_number_of_checks() {
        let key = LocalKey::generate(Algorithm::P256).unwrap();
        let keys = [key.public()];
        let good = sign(b"{\"a\":1}", IN_TOTO_PAYLOAD_TYPE, &key).unwrap();
        // The same envelope a thousand times: checked once.
        let mut checker = Checker::new(&keys);
        for _ in 0..1000 {
            checker.verify(&good, IN_TOTO_PAYLOAD_TYPE).unwrap();
        }
        assert_eq!(checker.checks_made(), 1);
        // Fifteen signatures that verify under no key before the genuine one, claiming no
        // key or ours, each different: the first envelope costs the checks of those claiming
        // ours (those claiming none are not tried once ours verified), its replays none (the
        // genuine signature is found verified first), and none is refused.
        // (Any bytes that verify under no key: each a different number.)
        let bogus = |i: usize, keyid: &str| EnvelopeSignature {
            keyid: keyid.to_string(),
            sig: b64().encode(format!("not a signature {i:08}")),
        };
        for claim in ["", key.keyid()] {
            let mut checker = Checker::new(&keys);
            for line in 0..200 {
                let mut padded = good.clone();
                padded.signatures = (0..15).map(|i| bogus(line * 15 + i, claim)).collect();
                padded.signatures.push(good.signatures[0].clone());
                checker.verify(&padded, IN_TOTO_PAYLOAD_TYPE).unwrap();
            }
            assert!(!checker.over_budget(), "{claim:?}");
            let first = if claim.is_empty() { 1 } else { 16 };
            assert_eq!(checker.checks_made(), first, "{claim:?}");
            // Each envelope still needs a signature of its own: a copy whose genuine
            // signature is damaged is rejected, though its payload verified before.
            let mut damaged = good.clone();
            let mut sig = b64().decode(&damaged.signatures[0].sig).unwrap();
            sig[8] ^= 1;
            damaged.signatures[0].sig = b64().encode(sig);
            assert!(matches!(
                checker.verify(&damaged, IN_TOTO_PAYLOAD_TYPE),
                Err(VerifyError::NoValidSignature { .. })
            ));
        }
        // A countersigner that leaves its key id empty (as cosign does) on every envelope of a
        // long genuine file: its signatures fail with our keys, and count for nothing.
        let mut checker = Checker::new(&keys);
        for n in 0..100 {
            let mut env = sign(
                format!("{{\"a\":{n}}}").as_bytes(),
                IN_TOTO_PAYLOAD_TYPE,
                &key,
            )
            .unwrap();
            env.signatures.insert(0, bogus(n, ""));
            checker.verify(&env, IN_TOTO_PAYLOAD_TYPE).unwrap();
            // Our own signature with its key id left empty too, after the countersigner's.
            let mut env = sign(
                format!("{{\"b\":{n}}}").as_bytes(),
                IN_TOTO_PAYLOAD_TYPE,
                &key,
            )
            .unwrap();
            env.signatures[0].keyid = String::new();
            env.signatures.insert(0, bogus(n, ""));
            checker.verify(&env, IN_TOTO_PAYLOAD_TYPE).unwrap();
        }
        assert!(!checker.over_budget());
        // Signatures with an empty key id beyond the first in each envelope count: fifteen
        // before our own (its key id stripped) on statement after statement are refused.
        let mut checker = Checker::new(&keys);
        let err = (0..100)
            .find_map(|n| {
                let mut env = sign(
                    format!("{{\"c\":{n}}}").as_bytes(),
                    IN_TOTO_PAYLOAD_TYPE,
                    &key,
                )
                .unwrap();
                env.signatures[0].keyid = String::new();
                let mut sigs: Vec<EnvelopeSignature> =
                    (0..15).map(|i| bogus(n * 15 + i, "")).collect();
                sigs.push(env.signatures[0].clone());
                env.signatures = sigs;
                checker.verify(&env, IN_TOTO_PAYLOAD_TYPE).err()
            })
            .expect("never refused");
        assert_eq!(err, VerifyError::Budget);
        // With two trusted keys, one genuine envelope replayed with a different empty-key-id
        // signature on each copy: the signature is tried with the other key each time, so
        // those failures count (only a check made for the envelope buys one free), and the
        // file is refused before the copies cost a check each for long.
        let second = LocalKey::generate(Algorithm::P256).unwrap();
        let two = [key.public(), second.public()];
        let mut checker = Checker::new(&two);
        let err = (0..1000)
            .find_map(|n| {
                let mut copy = good.clone();
                copy.signatures.push(bogus(100_000 + n, ""));
                checker.verify(&copy, IN_TOTO_PAYLOAD_TYPE).err()
            })
            .expect("never refused");
        assert_eq!(err, VerifyError::Budget);
        assert!(
            checker.checks_made() <= MAX_FAILED_SIGNATURES + 4,
            "{}",
            checker.checks_made()
        );
        // A trusted countersigner that left its key id empty is found beside our signature.
        let cosigner = LocalKey::generate(Algorithm::Ed25519).unwrap();
        let both = [key.public(), cosigner.public()];
        let mut env = sign(b"{\"d\":1}", IN_TOTO_PAYLOAD_TYPE, &key).unwrap();
        let mut counter = sign(b"{\"d\":1}", IN_TOTO_PAYLOAD_TYPE, &cosigner).unwrap();
        counter.signatures[0].keyid = String::new();
        env.signatures.push(counter.signatures[0].clone());
        let ok = Checker::new(&both)
            .verify(&env, IN_TOTO_PAYLOAD_TYPE)
            .unwrap();
        assert_eq!(
            ok.signers,
            [key.keyid().to_string(), cosigner.keyid().to_string()]
        );
        // Payloads no trusted key signed, each with signatures that fail: every check counts,
        // and the file is refused once it has shown more than the budget, before it costs more.
        for claim in ["", key.keyid()] {
            let mut checker = Checker::new(&keys);
            let err = (0..100)
                .find_map(|n| {
                    let mut forged = good.clone();
                    forged.payload = b64().encode(format!("{{\"forged\":{n}}}"));
                    forged.signatures = (0..16).map(|i| bogus(n * 16 + i, claim)).collect();
                    match checker.verify(&forged, IN_TOTO_PAYLOAD_TYPE) {
                        Err(VerifyError::NoValidSignature { .. }) => None,
                        other => Some(other),
                    }
                })
                .expect("never refused");
            assert!(
                matches!(err, Err(VerifyError::Budget)),
                "{claim:?}: {err:?}"
            );
            assert!(checker.over_budget());
            assert!(
                checker.checks_made() <= MAX_FAILED_SIGNATURES + 16,
                "{claim:?}: {}",
                checker.checks_made()
            );
            assert!(err
                .unwrap_err()
                .to_string()
                .starts_with("more than 64 signatures claim a trusted key"));
        }
    }

    #[test]
    fn tampering_is_detected() {
        let key = LocalKey::generate(Algorithm::P256).unwrap();
        let env = sign(b"{\"a\":1}", IN_TOTO_PAYLOAD_TYPE, &key).unwrap();
        let ok = verify(&env, IN_TOTO_PAYLOAD_TYPE, &[key.public()]).unwrap();
        assert_eq!(ok.payload, b"{\"a\":1}");
        assert_eq!(ok.signers, [key.keyid().to_string()]);
        let mut bad = env.clone();
        bad.payload = b64().encode(b"{\"a\":2}");
        assert!(matches!(
            verify(&bad, IN_TOTO_PAYLOAD_TYPE, &[key.public()]),
            Err(VerifyError::NoValidSignature { .. })
        ));
        let other = LocalKey::generate(Algorithm::Ed25519).unwrap();
        assert!(verify(&env, IN_TOTO_PAYLOAD_TYPE, &[other.public()]).is_err());
        // With several trusted keys, the signers are the keys that signed, not the others.
        let ok = verify(&env, IN_TOTO_PAYLOAD_TYPE, &[other.public(), key.public()]).unwrap();
        assert_eq!(ok.signers, [key.keyid().to_string()]);
        // The same key given twice (two copies of one file) is one signer.
        let ok = verify(&env, IN_TOTO_PAYLOAD_TYPE, &[key.public(), key.public()]).unwrap();
        assert_eq!(ok.signers, [key.keyid().to_string()]);
        assert!(matches!(
            verify(&env, "text/plain", &[key.public()]),
            Err(VerifyError::PayloadType { .. })
        ));
        // A signature another signer encoded differently is named for what it is.
        let mut raw = env.clone();
        raw.signatures[0].sig = b64().encode([1u8; 64]);
        let e = verify(&raw, IN_TOTO_PAYLOAD_TYPE, &[key.public()])
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with(
                "; signature 1: 64 bytes, not ASN.1 DER (raw r||s? P-256 signatures must be DER)"
            ),
            "{e}"
        );
        raw.signatures[0].sig = "not base64!".into();
        let e = verify(&raw, IN_TOTO_PAYLOAD_TYPE, &[key.public()])
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("; signature 1: not standard padded base64"),
            "{e}"
        );
        // A well-formed signature that does not verify gets no note.
        let e = verify(&bad, IN_TOTO_PAYLOAD_TYPE, &[key.public()])
            .unwrap_err()
            .to_string();
        assert!(e.ends_with(')'), "{e}");
        assert!(
            env.payload.len() % 4 == 0 && env.signatures[0].sig.len() % 4 == 0,
            "padded base64"
        );
    }
}
