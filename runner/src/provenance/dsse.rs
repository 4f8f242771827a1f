//! DSSE (Dead Simple Signing Envelope) v1: the envelope around the in-toto Statement.
//!
//! What is signed is the PAE (pre-authentication encoding) of the payload type and the payload
//! bytes, never the JSON of the envelope: `"DSSEv1" SP len(type) SP type SP len(payload) SP
//! payload`, lengths in bytes as ASCII decimal. Verification checks the signature over the PAE
//! of the exact payload bytes in the envelope, and only then are those same bytes parsed, so
//! what was verified is what is read.
//!
//! Wire rules the independent verifiers enforce and we follow: standard base64 with padding,
//! a non-empty `keyid` on every signature, P-256 signatures in ASN.1 DER.

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
pub fn verify(
    envelope: &Envelope,
    expected_type: &str,
    keys: &[PublicKey],
) -> Result<Verified, VerifyError> {
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
    // Every signature is checked against every trusted key (at most MAX_SIGNATURES of them):
    // a policy that binds builders to keys asks which keys signed, not only whether one did.
    let sigs: Vec<Vec<u8>> = envelope
        .signatures
        .iter()
        .filter_map(|s| b64().decode(&s.sig).ok())
        .collect();
    // A key id is only a hint: any trusted key whose signature verifies counts, once (the
    // same key given twice is one signer).
    let mut signers: Vec<String> = Vec::new();
    for k in keys {
        let id = k.keyid();
        if !signers.iter().any(|s| s == id) && sigs.iter().any(|sig| k.verify(&message, sig)) {
            signers.push(id.to_string());
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
