//! Tests of the verification policy: parsing, every check against real provenance shapes.

use super::*;
use crate::provenance::statement::{
    BuildDefinition, BuildMetadata, Builder, Provenance, RunDetails,
};
use serde_json::json;

const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const C: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

fn statement() -> Statement {
    Statement {
        type_: crate::provenance::statement::STATEMENT_TYPE.into(),
        subject: vec![ResourceDescriptor::sha256(Some("app".into()), None, A)],
        predicate_type: crate::provenance::statement::SLSA_PROVENANCE_V1.into(),
        predicate: Provenance {
            build_definition: BuildDefinition {
                build_type: crate::provenance::statement::BUILD_TYPE.into(),
                external_parameters: json!({
                    "source": { "uri": "https://git.example.com/org/app.git", "ref": "refs/heads/main" },
                    "job": { "path": "job.toml", "sha256": A },
                    "trust": "trusted",
                }),
                internal_parameters: json!({
                    "isolation": { "mode": "subuid" },
                    "weakened": [],
                }),
                resolved_dependencies: vec![
                    ResourceDescriptor::sha256(
                        Some("source".into()),
                        Some("git+https://git.example.com/org/app.git".into()),
                        A,
                    ),
                    ResourceDescriptor::sha256(
                        Some("jq".into()),
                        Some("https://example.org/jq.tgz".into()),
                        B,
                    ),
                ],
            },
            run_details: RunDetails {
                builder: Builder {
                    id: "https://ci.example.com/pool-a".into(),
                    version: Default::default(),
                    builder_dependencies: vec![ResourceDescriptor::sha256(
                        Some("bulwark".into()),
                        None,
                        C,
                    )],
                },
                metadata: BuildMetadata {
                    invocation_id: "1".into(),
                    started_on: "2030-01-01T00:00:00Z".into(),
                    finished_on: "2030-01-01T00:00:10Z".into(),
                },
                byproducts: vec![],
            },
        },
    }
}

fn now() -> SystemTime {
    humantime::parse_rfc3339("2030-01-01T01:00:00Z").unwrap()
}

fn rejection(policy: &str, st: &Statement) -> String {
    let p = Policy::from_toml_str(policy).unwrap();
    p.check(st, &[], now()).unwrap_err().to_string()
}

#[test]
fn an_unknown_field_is_an_error_naming_the_field_and_its_line() {
    let e = Policy::from_toml_str("builder_ids = [\"x\"]\nbuilder_id = \"x\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 2, column 1") && e.contains("unknown field `builder_id`"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
}

#[test]
fn values_that_can_never_be_right_are_errors_naming_the_key() {
    for (text, want) in [
        (
            "builder_ids = []",
            "builder_ids: an empty list rejects everything",
        ),
        (
            "require_trust = \"yes\"",
            "require_trust: \"yes\" is not a trust level",
        ),
        (
            "require_isolation = [\"chroot\"]",
            "require_isolation: \"chroot\" is not an isolation mode",
        ),
        (
            "quarantined_digests = [\"abc\"]",
            "quarantined_digests: \"abc\" is not a sha256 digest",
        ),
        (
            "allowed_dependency_digests = [\"xyz\"]",
            "allowed_dependency_digests: \"xyz\"",
        ),
        (
            "max_age = \"30 days\"",
            "max_age: \"30 days\" is not a duration",
        ),
        ("max_age = \"0s\"", "max_age: \"0s\" is zero"),
        ("max_age = \"0d\"", "max_age: \"0d\" is zero"),
        ("forbid_weakened = \"no\"", "invalid type"),
        (
            "[builder_keys]",
            "builder_keys: an empty table rejects everything",
        ),
        (
            "[builder_keys]\n\"https://b\" = []",
            "builder_keys: \"https://b\": an empty list rejects everything it builds",
        ),
        (
            "[builder_keys]\n\"https://b\" = [\"sha256:ABC\"]",
            "builder_keys: \"https://b\": \"sha256:ABC\" is not a key id",
        ),
    ] {
        let e = Policy::from_toml_str(text).unwrap_err().to_string();
        assert!(e.contains(want), "{text}: {e}");
    }
}

#[test]
fn an_empty_policy_only_forbids_weakened_builds() {
    let p = Policy::from_toml_str("").unwrap();
    assert_eq!(p, Policy::default());
    assert!(p.forbid_weakened);
    assert!(p.check(&statement(), &[], now()).is_ok());
}

#[test]
fn ages_count_days_hours_minutes_and_seconds() {
    assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
    assert_eq!(parse_age("1d12h"), Ok(Duration::from_secs(36 * 3_600)));
    assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_age("10m"), Ok(Duration::from_secs(600)));
    assert_eq!(parse_age("1h"), Ok(Duration::from_secs(3_600)));
    for bad in [
        "",
        "d",
        "30",
        "1.5d",
        "-1d",
        "1h1d",
        "1dd",
        "99999999999999999999d",
    ] {
        assert!(parse_age(bad).is_err(), "{bad}");
    }
}

#[test]
fn star_crosses_slashes_and_question_mark_is_one_character() {
    assert!(glob_matches(
        "https://git.example.com/org/*",
        "https://git.example.com/org/a/b.git"
    ));
    assert!(!glob_matches(
        "https://git.example.com/org/*",
        "https://git.example.com/other/a"
    ));
    assert!(glob_matches("refs/tags/v*", "refs/tags/v1.2.3"));
    assert!(!glob_matches("refs/tags/v*", "refs/heads/v1"));
    assert!(glob_matches("refs/heads/main", "refs/heads/main"));
    assert!(!glob_matches("refs/heads/main", "refs/heads/main2"));
    assert!(glob_matches("v?.0", "v1.0") && glob_matches("v?.0", "vé.0"));
    assert!(!glob_matches("v?.0", "v10.0"));
    assert!(glob_matches("*", "") && !glob_matches("?", ""));
    assert!(glob_matches("a*b*c", "aXbYbZc") && !glob_matches("a*b*c", "aXbY"));
    // Adversarial input stays fast (no exponential backtracking).
    let long = "a".repeat(5_000);
    assert!(!glob_matches("*a*a*a*a*a*b", &long));
}

#[test]
fn each_check_rejects_naming_itself_and_the_values_seen() {
    let st = statement();
    let cases = [
        ("builder_ids = [\"https://other\"]", "builder_ids: runDetails.builder.id is \"https://ci.example.com/pool-a\", not one of [\"https://other\"]"),
        ("source_uris = [\"https://git.example.com/other/*\"]", "source_uris: externalParameters.source.uri is \"https://git.example.com/org/app.git\", which matches none of [\"https://git.example.com/other/*\"]"),
        ("source_refs = [\"refs/tags/v*\"]", "source_refs: externalParameters.source.ref is \"refs/heads/main\", which matches none of [\"refs/tags/v*\"]"),
        ("require_isolation = [\"root-per-job-uid\"]", "require_isolation: internalParameters.isolation.mode is \"subuid\", not one of [\"root-per-job-uid\"]"),
        (&format!("allowed_dependency_digests = [\"{A}\"]"), &format!("allowed_dependency_digests: resolvedDependencies \"jq\" (\"https://example.org/jq.tgz\") has sha256 {B}, which is not in the allowed list")),
        (&format!("quarantined_digests = [\"{C}\"]"), &format!("quarantined_digests: builderDependencies \"bulwark\" has quarantined sha256 {C}")),
        (&format!("quarantined_digests = [\"{}\"]", B.to_uppercase()), &format!("quarantined_digests: resolvedDependencies \"jq\" (\"https://example.org/jq.tgz\") has quarantined sha256 {B}")),
        ("max_age = \"30m\"", "max_age: finished 59m 50s ago (runDetails.metadata.finishedOn 2030-01-01T00:00:10Z), more than max_age 30m"),
    ];
    for (policy, want) in cases {
        assert_eq!(rejection(policy, &st), want, "{policy}");
    }
    let accept = format!(
        "builder_ids = [\"https://ci.example.com/pool-a\"]\nsource_uris = [\"https://git.example.com/org/*\"]\n\
         source_refs = [\"refs/heads/main\"]\nrequire_trust = \"trusted\"\nrequire_isolation = [\"subuid\"]\n\
         allowed_dependency_digests = [\"{B}\"]\nquarantined_digests = [\"{}\"]\nmax_age = \"2h\"\n",
        "d".repeat(64)
    );
    Policy::from_toml_str(&accept)
        .unwrap()
        .check(&st, &[], now())
        .unwrap();
}

#[test]
fn trust_is_checked_and_untrusted_accepts_both_levels() {
    let mut st = statement();
    assert!(Policy::from_toml_str("require_trust = \"untrusted\"")
        .unwrap()
        .check(&st, &[], now())
        .is_ok());
    st.predicate.build_definition.external_parameters["trust"] = json!("untrusted");
    assert_eq!(
        rejection("require_trust = \"trusted\"", &st),
        "require_trust: externalParameters.trust is \"untrusted\", the policy requires \"trusted\""
    );
    assert!(Policy::from_toml_str("require_trust = \"untrusted\"")
        .unwrap()
        .check(&st, &[], now())
        .is_ok());
    st.predicate.build_definition.external_parameters["trust"] = json!("root");
    assert!(rejection("require_trust = \"untrusted\"", &st)
        .starts_with("require_trust: externalParameters.trust is \"root\""));
}

#[test]
fn absent_fields_reject_rather_than_pass() {
    let mut st = statement();
    let ext = &mut st.predicate.build_definition.external_parameters;
    ext["source"] = json!({ "path": "/src", "treeDigest": A });
    ext.as_object_mut().unwrap().remove("trust");
    let int = &mut st.predicate.build_definition.internal_parameters;
    int["isolation"] = Value::Null;
    int.as_object_mut().unwrap().remove("weakened");
    // A local source: the uri comes from the signed "source" dependency, the one whose uri is
    // file://<externalParameters.source.path>.
    assert!(rejection("source_uris = [\"*\"]", &st)
        .starts_with("source_uris: the statement names no source uri"));
    st.predicate.build_definition.resolved_dependencies[0].uri = Some("file:///src".into());
    assert_eq!(
        rejection("source_uris = [\"https://*\"]", &st),
        "source_uris: resolvedDependencies \"source\" uri is \"file:///src\", which matches none of [\"https://*\"]"
    );
    assert!(rejection("source_refs = [\"*\"]", &st)
        .starts_with("source_refs: the statement has no externalParameters.source.ref"));
    assert_eq!(rejection("require_trust = \"untrusted\"", &st), "require_trust: externalParameters.trust is absent, the policy requires \"trusted\" or \"untrusted\"");
    assert_eq!(
        rejection(
            "forbid_weakened = false\nrequire_isolation = [\"subuid\"]",
            &st
        ),
        "require_isolation: internalParameters.isolation.mode is absent, not one of [\"subuid\"]"
    );
    assert_eq!(
        rejection("", &st),
        "forbid_weakened: internalParameters.weakened is absent, expected an empty list"
    );
    st.predicate.build_definition.resolved_dependencies.clear();
    assert!(
        rejection("forbid_weakened = false\nsource_uris = [\"*\"]", &st)
            .starts_with("source_uris: the statement names no source uri")
    );
    st.predicate.run_details.metadata.finished_on = "yesterday".into();
    assert_eq!(
        rejection("forbid_weakened = false\nmax_age = \"1d\"", &st),
        "max_age: runDetails.metadata.finishedOn \"yesterday\" is not an RFC 3339 UTC timestamp"
    );
}

#[test]
fn weakened_builds_are_rejected_by_default_and_accepted_when_allowed() {
    let mut st = statement();
    st.predicate.build_definition.internal_parameters["weakened"] = json!(["seccomp"]);
    assert_eq!(
        rejection("", &st),
        "forbid_weakened: internalParameters.weakened lists [\"seccomp\"]; set forbid_weakened = false to accept weakened builds"
    );
    assert!(Policy::from_toml_str("forbid_weakened = false")
        .unwrap()
        .check(&st, &[], now())
        .is_ok());
}

#[test]
fn a_dependency_without_a_digest_fails_pinning_and_the_source_is_exempt() {
    let mut st = statement();
    st.predicate.build_definition.resolved_dependencies[1]
        .digest
        .clear();
    assert_eq!(
        rejection(&format!("allowed_dependency_digests = [\"{B}\"]"), &st),
        "allowed_dependency_digests: resolvedDependencies \"jq\" (\"https://example.org/jq.tgz\") has no sha256 digest"
    );
    st.predicate
        .build_definition
        .resolved_dependencies
        .truncate(1);
    assert!(Policy::from_toml_str("allowed_dependency_digests = []")
        .unwrap()
        .check(&st, &[], now())
        .is_ok());
}

#[test]
fn a_statement_dated_in_the_future_beyond_clock_skew_fails_max_age() {
    let mut st = statement();
    st.predicate.run_details.metadata.finished_on = "2030-01-01T01:04:00Z".into();
    assert!(Policy::from_toml_str("max_age = \"1h\"")
        .unwrap()
        .check(&st, &[], now())
        .is_ok());
    st.predicate.run_details.metadata.finished_on = "2030-01-02T00:00:00Z".into();
    assert_eq!(
        rejection("max_age = \"1h\"", &st),
        "max_age: runDetails.metadata.finishedOn 2030-01-02T00:00:00Z is 23h in the future"
    );
}

/// A job may name a tool `source` (tool names only have to match `[a-z0-9][a-z0-9._-]*`), and
/// the runner records each tool as a resolved dependency named after it, so the statement then
/// holds two entries named "source": the real source, then the tool.
fn with_a_tool_named_source(st: &mut Statement, uri: &str, sha: &str) {
    st.predicate
        .build_definition
        .resolved_dependencies
        .push(ResourceDescriptor::sha256(
            Some("source".into()),
            Some(uri.into()),
            sha,
        ));
}

#[test]
fn a_tool_named_source_is_pinned_like_any_other_tool() {
    let mut st = statement();
    with_a_tool_named_source(&mut st, "https://evil.example/payload.tgz", C);
    assert_eq!(
        rejection(&format!("allowed_dependency_digests = [\"{B}\"]"), &st),
        format!(
            "allowed_dependency_digests: resolvedDependencies \"source\" \
             (\"https://evil.example/payload.tgz\") has sha256 {C}, which is not in the allowed list"
        )
    );
}

#[test]
fn a_tool_named_source_is_never_read_as_the_source_uri() {
    // A job with no source at all records `externalParameters.source = {}`; its only
    // dependency named "source" is then a tool, fetched from wherever the job said.
    let mut st = statement();
    st.predicate.build_definition.external_parameters["source"] = json!({});
    st.predicate.build_definition.resolved_dependencies.clear();
    with_a_tool_named_source(&mut st, "https://git.example.com/org/app.git", B);
    assert!(
        rejection("source_uris = [\"https://git.example.com/org/*\"]", &st)
            .starts_with("source_uris: the statement names no source uri"),
        "{}",
        rejection("source_uris = [\"https://git.example.com/org/*\"]", &st)
    );
    // Nor is it exempt from pinning as the source would be.
    assert!(
        rejection(&format!("allowed_dependency_digests = [\"{A}\"]"), &st)
            .starts_with("allowed_dependency_digests: resolvedDependencies \"source\""),
    );
}

#[test]
fn a_source_uri_with_dot_segments_matches_no_glob() {
    // The runner fetches the `url` crate's normalized URL (git and archive sources alike) but
    // records the text as the job gave it: `org/../attacker` is fetched from `attacker`.
    for (uri, fetched) in [
        (
            "https://git.example.com/org/../attacker/app.git",
            "https://git.example.com/attacker/app.git",
        ),
        (
            "https://git.example.com/org/%2e%2E/attacker/app.git",
            "https://git.example.com/attacker/app.git",
        ),
        (
            "https://git.example.com/org/app.git/..\\..\\attacker/app.git",
            "https://git.example.com/attacker/app.git",
        ),
        (
            "https://git.example.com/org/./../attacker/app.git",
            "https://git.example.com/attacker/app.git",
        ),
    ] {
        assert_eq!(reqwest::Url::parse(uri).unwrap().as_str(), fetched);
        let mut st = statement();
        st.predicate.build_definition.external_parameters["source"]["uri"] = json!(uri);
        let e = rejection("source_uris = [\"https://git.example.com/org/*\"]", &st);
        assert!(
            e.starts_with(&format!(
                "source_uris: externalParameters.source.uri is {}, which has a \".\" or \"..\" segment",
                quote(uri)
            )),
            "{uri}: {e}"
        );
    }
    // Dots inside a segment are ordinary characters.
    let mut st = statement();
    st.predicate.build_definition.external_parameters["source"]["uri"] =
        json!("https://git.example.com/org/a..b/.c/app.git");
    Policy::from_toml_str("source_uris = [\"https://git.example.com/org/*\"]")
        .unwrap()
        .check(&st, &[], now())
        .unwrap();
}

#[test]
fn a_star_in_a_globs_host_matches_only_within_the_host() {
    let policy = Policy::from_toml_str("source_uris = [\"https://*.example.com/*\"]").unwrap();
    let check = |uri: &str| {
        let mut st = statement();
        st.predicate.build_definition.external_parameters["source"]["uri"] = json!(uri);
        policy.check(&st, &[], now()).map_err(|r| r.to_string())
    };
    check("https://git.example.com/org/app.git").unwrap();
    check("https://a.b.example.com/app.git").unwrap();
    // Each of these is fetched from evil.example (the `url` crate's reading, which the
    // runner's fetchers use), yet the text matched the glob as a whole.
    for (uri, host) in [
        ("https://evil.example/x.example.com/app.git", "evil.example"),
        ("https://evil.example\\.example.com/app.git", "evil.example"),
        ("https://evil.example?.example.com/app.git", "evil.example"),
        ("https://evil.example#.example.com/app.git", "evil.example"),
    ] {
        assert_eq!(reqwest::Url::parse(uri).unwrap().host_str(), Some(host));
        let e = check(uri).unwrap_err();
        assert!(
            e.starts_with("source_uris: externalParameters.source.uri is "),
            "{uri}: {e}"
        );
    }
    assert_eq!(
        check("https://evil.example\\.example.com/app.git").unwrap_err(),
        "source_uris: externalParameters.source.uri is \"https://evil.example\\\\.example.com/app.git\", \
         which the runner fetched as \"https://evil.example/.example.com/app.git\": only a URI in \
         that normalized form is matched"
    );
    // Patterns without a host part, or ending inside it, match the whole text as before.
    for pattern in ["*", "https://*", "https://git.example.com*"] {
        let p = Policy::from_toml_str(&format!("source_uris = [\"{pattern}\"]")).unwrap();
        p.check(&statement(), &[], now()).unwrap();
    }
}

#[test]
fn a_source_uri_with_an_encoded_slash_or_backslash_in_its_path_matches_no_glob() {
    // The `url` crate keeps `%2f` as it is, so each of these is already in normal form and its
    // text matched `org/*`; a server that decodes `%2f` before resolving `..` serves
    // `/evil/repo`.
    for uri in [
        "https://git.example.com/org/%2e%2e%2fevil/repo",
        "https://git.example.com/org/..%2Fevil/repo",
        "https://git.example.com/org/..%2f..%2fevil/repo",
        "https://git.example.com/org/..%5cevil/repo",
        "https://git.example.com/org/x%5C..%5C..%5Cevil/repo",
    ] {
        assert_eq!(reqwest::Url::parse(uri).unwrap().as_str(), uri);
        let mut st = statement();
        st.predicate.build_definition.external_parameters["source"]["uri"] = json!(uri);
        st.predicate.build_definition.resolved_dependencies[0].uri = Some(format!("git+{uri}"));
        let e = rejection("source_uris = [\"https://git.example.com/org/*\"]", &st);
        assert_eq!(
            e,
            format!(
                "source_uris: externalParameters.source.uri is {}, which has a percent-encoded \
                 \"/\" or \"\\\" (%2f, %5c) in its path: a server that decodes it reads other \
                 segments than the glob saw, so no glob can say where from",
                quote(uri)
            ),
            "{uri}"
        );
    }
    // So does a local source's file:// uri.
    let mut st = statement();
    st.predicate.build_definition.external_parameters["source"] =
        json!({ "path": "/work/a%2f..%2fb" });
    st.predicate.build_definition.resolved_dependencies[0].uri =
        Some("file:///work/a%2f..%2fb".into());
    assert!(rejection("source_uris = [\"file:///work/*\"]", &st)
        .contains("which has a percent-encoded \"/\" or \"\\\" (%2f, %5c) in its path"));
    // Other escapes, and %2f in the query, are left to the glob.
    for uri in [
        "https://git.example.com/org/a%20b/repo",
        "https://git.example.com/org/%2e2f/repo",
        "https://git.example.com/org/repo?path=a%2Fb",
    ] {
        let mut st = statement();
        st.predicate.build_definition.external_parameters["source"]["uri"] = json!(uri);
        Policy::from_toml_str("source_uris = [\"https://git.example.com/org/*\"]")
            .unwrap()
            .check(&st, &[], now())
            .unwrap();
    }
}

#[test]
fn a_source_uri_that_does_not_parse_matches_no_glob() {
    // The text matches the glob as a whole, but it is no URL the runner could have fetched:
    // `evil.com:1.git.example.com` is a host `evil.com` with a port that is not a number.
    let uri = "https://evil.com:1.git.example.com/org/x";
    assert!(reqwest::Url::parse(uri).is_err());
    assert!(uri_glob_matches("https://*.example.com/*", uri));
    let mut st = statement();
    st.predicate.build_definition.external_parameters["source"]["uri"] = json!(uri);
    assert_eq!(
        rejection("source_uris = [\"https://*.example.com/*\"]", &st),
        "source_uris: externalParameters.source.uri is \"https://evil.com:1.git.example.com/org/x\", \
         which does not parse as a URL (invalid port number): the runner fetches only URLs that \
         parse, so it matches nothing"
    );
    for uri in [
        "/srv/git/app.git",
        "https://[::1/app.git",
        "https://git.example.com:99999/app.git",
    ] {
        let mut st = statement();
        st.predicate.build_definition.external_parameters["source"]["uri"] = json!(uri);
        let e = rejection("source_uris = [\"*\"]", &st);
        assert!(e.contains("which does not parse as a URL ("), "{uri}: {e}");
    }
}

#[test]
fn a_policy_that_is_not_a_small_regular_file_is_refused_at_once() {
    use crate::tools::testutil::{fifo, returns_within, TempDir};
    let dir = TempDir::named("bulwark-policy");
    let load = |p: std::path::PathBuf| {
        returns_within("Policy::load", move || {
            Policy::load(&p).map_err(|e| {
                let cause = std::error::Error::source(&e).map(ToString::to_string);
                format!("{e}: {}", cause.unwrap_or_default())
            })
        })
    };
    // A fifo without a writer: opened the usual way, it waits for one for ever.
    let pipe = dir.join("policy.toml");
    fifo(&pipe);
    assert_eq!(
        load(pipe.clone()).unwrap_err(),
        format!(
            "policy {}: cannot read: not a regular file (a fifo)",
            pipe.display()
        )
    );
    // Valid TOML, but more than any policy holds.
    let big = dir.join("big.toml");
    let line = "# a comment line of some length, repeated\n";
    std::fs::write(
        &big,
        line.repeat((MAX_POLICY_BYTES as usize) / line.len() + 1),
    )
    .unwrap();
    assert_eq!(
        load(big.clone()).unwrap_err(),
        format!("policy {}: cannot read: larger than 1 MiB", big.display())
    );
    // A device: read carelessly, /dev/zero fills memory.
    assert_eq!(
        load("/dev/zero".into()).unwrap_err(),
        "policy /dev/zero: cannot read: not a regular file (a device node)"
    );
}

#[test]
fn a_dependency_digest_that_is_not_hex_is_quoted_and_cut() {
    let mut st = statement();
    let long = "z".repeat(10_000);
    st.predicate.build_definition.resolved_dependencies[1]
        .digest
        .insert("sha256".into(), long.clone());
    let e = rejection(&format!("allowed_dependency_digests = [\"{B}\"]"), &st);
    assert_eq!(
        e,
        format!(
            "allowed_dependency_digests: resolvedDependencies \"jq\" (\"https://example.org/jq.tgz\") \
             has sha256 {}, which is not in the allowed list",
            quote(&long)
        )
    );
    assert!(e.len() < 300, "{e}");
}

#[test]
fn a_missing_ref_says_local_and_url_sources_have_none() {
    let mut st = statement();
    st.predicate.build_definition.external_parameters["source"] =
        json!({ "uri": "https://example.org/app.tar.gz", "sha256": A });
    assert_eq!(
        rejection("source_refs = [\"refs/heads/main\"]", &st),
        "source_refs: the statement has no externalParameters.source.ref (local and url \
         (tarball) sources have none)"
    );
}

#[test]
fn a_max_age_past_the_largest_duration_is_too_large_not_malformed() {
    for (text, want) in [
        (
            "99999999999999999999h",
            "max_age: \"99999999999999999999h\" is too large",
        ),
        (
            "1d99999999999999999999s",
            "max_age: \"1d99999999999999999999s\" is too large",
        ),
        (
            "99999999999999999999d",
            "max_age: \"99999999999999999999d\" is too large",
        ),
        (
            "5124095576030431h",
            "max_age: \"5124095576030431h\" is too large",
        ),
        // Still the form, whatever the text says.
        ("too large", "max_age: \"too large\" is not a duration"),
        ("1h2d", "max_age: \"1h2d\" is not a duration"),
    ] {
        let e = Policy::from_toml_str(&format!("max_age = \"{text}\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with(want) || e.contains(&format!("{want};")),
            "{text}: {e}"
        );
    }
}
