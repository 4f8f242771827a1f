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

/// A Sigstore bundle as `bulwark verify` reads it: every field protobuf-specs defines at the
/// levels read, so that each can be refused by name, and nothing else (an unknown field is
/// unusable input, as in an envelope).
///
/// Values Bulwark does not use are read as [`IgnoredAny`](serde::de::IgnoredAny): skipped
/// without being kept, so a huge one costs no memory. What may be present is judged by
/// [`ReadBundle::envelope`], not here.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadBundle {
    /// Any JSON value: a wrong one is a rejection that quotes it.
    #[serde(rename = "mediaType")]
    pub media_type: Option<Scalar>,
    /// The key (or certificate) and the log entries.
    #[serde(rename = "verificationMaterial")]
    pub verification_material: Option<ReadVerificationMaterial>,
    /// The signed content, when it is an envelope.
    #[serde(rename = "dsseEnvelope")]
    pub dsse_envelope: Option<Envelope>,
    /// The signed content, when it is a signature over a blob's digest.
    #[serde(rename = "messageSignature")]
    pub message_signature: Option<serde::de::IgnoredAny>,
}

/// `verificationMaterial` as read: its `content` one-of and the evidence of a log or a
/// timestamp authority, none of which Bulwark checks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadVerificationMaterial {
    /// A key named by hint (the hint is not used to pick a key).
    #[serde(rename = "publicKey")]
    pub public_key: Option<serde::de::IgnoredAny>,
    /// A Fulcio certificate: an identity Bulwark does not check.
    pub certificate: Option<serde::de::IgnoredAny>,
    /// A certificate chain (v0.1, v0.2).
    #[serde(rename = "x509CertificateChain")]
    pub x509_certificate_chain: Option<serde::de::IgnoredAny>,
    /// Transparency log entries, counted, not kept.
    #[serde(rename = "tlogEntries", default)]
    pub tlog_entries: Option<Vec<serde::de::IgnoredAny>>,
    /// RFC 3161 timestamps.
    #[serde(rename = "timestampVerificationData")]
    pub timestamp_verification_data: Option<serde::de::IgnoredAny>,
}

/// A JSON value reduced to what a message about it needs: a string whole, anything else by
/// kind (an array or object is skipped, not kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scalar {
    /// A string.
    Str(String),
    /// `null`, a number or a boolean as written; `an array`, `an object`.
    Other(String),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Other(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Other(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Other(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Other(v.to_string()))
            }
            fn visit_unit<E>(self) -> Result<Scalar, E> {
                Ok(Scalar::Other("null".into()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Scalar, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other("an array".into()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Scalar, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Scalar::Other("an object".into()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Why a readable bundle is not one `bulwark verify` accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BundleRefusal(pub String);

impl ReadBundle {
    /// The envelope, when the bundle is what Bulwark writes: v0.3, a public key and no
    /// certificate (the identity must be the key the operator trusts), no log entries or
    /// timestamps (evidence Bulwark does not check must not look checked), and exactly one
    /// of `dsseEnvelope` and `messageSignature`, the former, with one signature.
    ///
    /// `Err(None)` for a bundle with no content at all (not usable input), `Err(Some(_))`
    /// for one that is readable but refused.
    pub fn envelope(self) -> Result<Envelope, Option<BundleRefusal>> {
        let refuse = |m: String| Err(Some(BundleRefusal(m)));
        let with_sigstore = "; verify such a bundle with a Sigstore verifier \
                             (cosign verify-blob-attestation, @sigstore/verify)";
        let envelope =
            match (self.dsse_envelope, self.message_signature.is_some()) {
                (None, false) => return Err(None),
                (Some(_), true) => {
                    return refuse(
                        "the bundle has both a dsseEnvelope and a messageSignature; a bundle \
                     carries exactly one"
                            .into(),
                    )
                }
                (None, true) => return refuse(
                    "the bundle has a messageSignature (a signature over a blob's digest), not \
                     a dsseEnvelope; Bulwark's provenance is a DSSE envelope"
                        .into(),
                ),
                (Some(e), false) => e,
            };
        match &self.media_type {
            Some(Scalar::Str(s)) if s == BUNDLE_MEDIA_TYPE => {}
            other => {
                let seen = match other {
                    None => "absent".to_string(),
                    Some(Scalar::Str(s)) => bulwark_protocol::error::quote(s),
                    Some(Scalar::Other(s)) => bulwark_protocol::error::quote(s),
                };
                return refuse(format!(
                    "mediaType is {seen}, expected {BUNDLE_MEDIA_TYPE:?}"
                ));
            }
        }
        let Some(vm) = self.verification_material else {
            return refuse(
                "the bundle has no verificationMaterial; Bulwark's bundles name their public \
                 key there"
                    .into(),
            );
        };
        if vm.certificate.is_some() || vm.x509_certificate_chain.is_some() {
            return refuse(format!(
                "verificationMaterial holds a certificate: Bulwark checks signatures with the \
                 keys given, not certificate identities{with_sigstore}"
            ));
        }
        if vm.public_key.is_none() {
            return refuse(
                "verificationMaterial has no publicKey; Bulwark's bundles name their key there"
                    .into(),
            );
        }
        let tlog = vm.tlog_entries.as_ref().map_or(0, Vec::len);
        if tlog > 0 {
            return refuse(format!(
                "verificationMaterial has {tlog} transparency log entries, which Bulwark does \
                 not check{with_sigstore}"
            ));
        }
        if vm.timestamp_verification_data.is_some() {
            return refuse(format!(
                "verificationMaterial has timestampVerificationData, which Bulwark does not \
                 check{with_sigstore}"
            ));
        }
        if envelope.signatures.len() != 1 {
            return refuse(format!(
                "dsseEnvelope has {} signatures; a Sigstore bundle carries exactly one",
                envelope.signatures.len()
            ));
        }
        Ok(envelope)
    }
}
