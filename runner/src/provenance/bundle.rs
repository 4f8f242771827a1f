//! Sigstore bundle v0.3 holding our DSSE envelope, verified with a public key (no
//! certificate, no transparency log).
//!
//! Shape (protobuf-specs `sigstore_bundle.proto`, JSON names): `mediaType`
//! `application/vnd.dev.sigstore.bundle.v0.3+json`; `verificationMaterial.publicKey.hint` set
//! to our key id so a verifier can find the key in its key map; `tlogEntries: []` (the field
//! must be present); `dsseEnvelope` with exactly one signature.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::dsse::Envelope;

/// Media type of a v0.3 bundle.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

/// A Sigstore bundle (the parts we write).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// [`BUNDLE_MEDIA_TYPE`].
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// How to verify it.
    #[serde(rename = "verificationMaterial")]
    pub verification_material: VerificationMaterial,
    /// The signed content.
    #[serde(rename = "dsseEnvelope")]
    pub dsse_envelope: Envelope,
}

/// Verification material: a public key hint and no log entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationMaterial {
    /// The key, by hint.
    #[serde(rename = "publicKey")]
    pub public_key: PublicKeyIdentifier,
    /// Transparency log entries (none).
    #[serde(rename = "tlogEntries")]
    pub tlog_entries: Vec<serde_json::Value>,
}

/// A public key named by hint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeyIdentifier {
    /// Our key id.
    pub hint: String,
}

/// Wraps an envelope with exactly one signature.
pub fn wrap(envelope: &Envelope) -> Result<Bundle> {
    if envelope.signatures.len() != 1 {
        bail!(
            "a Sigstore bundle holds exactly one signature, the envelope has {}",
            envelope.signatures.len()
        );
    }
    Ok(Bundle {
        media_type: BUNDLE_MEDIA_TYPE.to_string(),
        verification_material: VerificationMaterial {
            public_key: PublicKeyIdentifier {
                hint: envelope.signatures[0].keyid.clone(),
            },
            tlog_entries: Vec::new(),
        },
        dsse_envelope: envelope.clone(),
    })
}
