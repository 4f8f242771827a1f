//! in-toto Statement v1 with an SLSA Provenance v1 predicate, as our own small serde types.
//!
//! Field names and shapes follow the in-toto attestation spec (`spec/v1/statement.md`,
//! `resource_descriptor.md`) and SLSA `provenance.md` v1 exactly; the in-toto-attestation
//! Python package's protobuf parser, which rejects unknown or misspelled fields, is run over
//! our output in the interoperability tests. The meaning of every field Bulwark writes is
//! documented in `docs/build-type.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `_type` of an in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// `predicateType` of SLSA Provenance v1.
pub const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";
/// Our `buildType` (documented in docs/build-type.md).
pub const BUILD_TYPE: &str = "https://bulwark.invalid/buildtypes/job/v1";

/// An in-toto Statement v1 carrying SLSA Provenance v1.
///
/// Unknown fields are refused here as in every nested type, deliberately stricter than a
/// general in-toto consumer: `bulwark verify` reads only statements of our own build type,
/// whose every field we write, and a key it would skip can be one another verifier reads. Go's
/// `encoding/json` (cosign, slsa-verifier) matches keys to fields case-insensitively, so a
/// signed payload with both `"subject"` and `"Subject"` could name one artifact list to us and
/// the other to them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// Always [`STATEMENT_TYPE`].
    #[serde(rename = "_type")]
    pub type_: String,
    /// The artifacts this statement is about.
    pub subject: Vec<ResourceDescriptor>,
    /// Always [`SLSA_PROVENANCE_V1`] for ours.
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// The provenance.
    pub predicate: Provenance,
}

/// in-toto ResourceDescriptor (every field of the v1 spec).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceDescriptor {
    /// Where the resource can be downloaded from.
    #[serde(
        rename = "downloadLocation",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub download_location: Option<String>,
    /// Media type of the resource.
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The resource's content, base64 (protobuf `bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Name (for subjects: the path relative to the output directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// URI identifying the resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Digests by algorithm, lowercase hex.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digest: BTreeMap<String, String>,
    /// Extra information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ResourceDescriptor {
    /// A descriptor with a sha256 digest.
    pub fn sha256(name: Option<String>, uri: Option<String>, hex: &str) -> Self {
        ResourceDescriptor {
            name,
            uri,
            digest: BTreeMap::from([("sha256".to_string(), hex.to_string())]),
            ..Default::default()
        }
    }
}

/// SLSA Provenance v1 predicate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// What was built, from what.
    #[serde(rename = "buildDefinition")]
    pub build_definition: BuildDefinition,
    /// Who built it, when.
    #[serde(rename = "runDetails")]
    pub run_details: RunDetails,
}

/// SLSA BuildDefinition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildDefinition {
    /// [`BUILD_TYPE`].
    #[serde(rename = "buildType")]
    pub build_type: String,
    /// Inputs under the control of whoever started the build.
    #[serde(rename = "externalParameters")]
    pub external_parameters: serde_json::Value,
    /// Inputs under the control of the builder (the operator).
    #[serde(
        rename = "internalParameters",
        default,
        skip_serializing_if = "serde_json::Value::is_null"
    )]
    pub internal_parameters: serde_json::Value,
    /// Artifacts fetched during the build: source, tools, rootfs.
    #[serde(
        rename = "resolvedDependencies",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub resolved_dependencies: Vec<ResourceDescriptor>,
}

/// SLSA RunDetails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunDetails {
    /// The builder.
    pub builder: Builder,
    /// This run.
    pub metadata: BuildMetadata,
    /// Other artifacts of the run: the log, result.json, the egress log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub byproducts: Vec<ResourceDescriptor>,
}

/// SLSA Builder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Builder {
    /// The operator-configured builder id.
    pub id: String,
    /// Versions of builder components.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub version: BTreeMap<String, String>,
    /// The builder's own software, by digest.
    #[serde(
        rename = "builderDependencies",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub builder_dependencies: Vec<ResourceDescriptor>,
}

/// SLSA BuildMetadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildMetadata {
    /// Unique per run.
    #[serde(rename = "invocationId")]
    pub invocation_id: String,
    /// RFC 3339, UTC, `Z`.
    #[serde(rename = "startedOn")]
    pub started_on: String,
    /// RFC 3339, UTC, `Z`.
    #[serde(rename = "finishedOn")]
    pub finished_on: String,
}
