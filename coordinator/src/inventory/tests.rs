use super::*;
use serde_json::json;

const TOOL: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const ART: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const BIN: &str = "3333333333333333333333333333333333333333333333333333333333333333";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A DSSE line carrying a statement with one artifact, a git source, a tool and the builder's
/// binary.
fn line(artifact: &str, commit: &str) -> String {
    crate::testutil::provenance_line(artifact, commit, TOOL, BIN)
}

fn job() -> IndexedJob {
    IndexedJob {
        id: "job-1".into(),
        name: "app".into(),
        trust: "trusted".into(),
        runner_id: Some("runner-1".into()),
        provenance: None,
    }
}

#[test]
fn every_digest_a_statement_names_is_a_key_in_lowercase() {
    let statements = read(&format!("{}\n\n", line(ART, COMMIT))).unwrap();
    assert_eq!(statements.len(), 1);
    assert_eq!(statements[0].subjects[0].sha256, ART);
    let keys = keys(&statements);
    let mut want: BTreeSet<String> = [ART, COMMIT, TOOL, BIN]
        .iter()
        .map(|v| format!("d:{v}"))
        .collect();
    want.insert(format!("c:{COMMIT}"));
    want.insert("u:git+https://git.example/app.git".into());
    want.insert("u:https://tools.example/jq.tgz".into());
    assert_eq!(keys, want);
}

#[test]
fn provenance_that_is_not_in_toto_envelopes_is_refused_naming_the_line() {
    let good = line(ART, COMMIT);
    for (bad, says) in [
        ("not json".to_string(), "provenance line 2: not JSON"),
        (
            good.replace(PAYLOAD_TYPE, "text/plain"),
            "provenance line 2: payloadType",
        ),
        (
            json!({"payloadType": PAYLOAD_TYPE, "payload": "%%%"}).to_string(),
            "provenance line 2: payload is not standard base64",
        ),
        (
            line("\u{1b}]52;c;x\u{7}", COMMIT),
            "provenance line 2: subject 0: digest.sha256 is not 64 hex digits",
        ),
        (
            line(ART, "abcdef0-dirty"),
            "provenance line 2: a gitCommit digest is not hex",
        ),
        (
            json!({"payloadType": PAYLOAD_TYPE, "payload": base64::engine::general_purpose::STANDARD.encode("{\"_type\":\"x\"}")}).to_string(),
            "provenance line 2: the payload is not an https://in-toto.io/Statement/v1 statement",
        ),
    ] {
        let e = read(&format!("{good}\n{bad}\n")).unwrap_err();
        assert!(e.starts_with(says), "{e}");
    }
}

#[test]
fn a_query_finds_what_used_a_digest_or_a_commit_and_an_artifact_by_its_own_digest() {
    let statements = read(&format!(
        "{}\n{}",
        line(ART, COMMIT),
        line(TOOL, "ffffffffff")
    ))
    .unwrap();
    let j = job();
    let by_uri = |digest: Option<&str>, commit: Option<&str>, uri: Option<&str>| {
        let q = Query {
            digest: digest.map(String::from),
            commit: commit.map(String::from),
            uri: uri.map(String::from),
        }
        .check()
        .unwrap();
        hits(&q, &j, &statements)
            .into_iter()
            .map(|h| {
                (
                    h.artifact.sha256,
                    h.matched
                        .iter()
                        .map(|d| d.name.clone().unwrap_or_default())
                        .collect::<Vec<_>>(),
                )
            })
            .collect::<Vec<_>>()
    };
    let q = |digest: Option<&str>, commit: Option<&str>| by_uri(digest, commit, None);
    // The tool: both statements used it (the second's artifact is the tool's digest too).
    assert_eq!(
        q(Some(TOOL), None),
        [
            (ART.to_string(), vec!["jq".to_string()]),
            (TOOL.to_string(), vec!["jq".to_string()])
        ]
    );
    // A commit prefix, in upper case: the first statement only.
    assert_eq!(
        q(None, Some("0123456789ABC")),
        [(ART.to_string(), vec!["source".to_string()])]
    );
    // Both: built from that commit with that tool.
    assert_eq!(
        q(Some(&format!("sha256:{TOOL}")), Some("0123456")),
        [(
            ART.to_string(),
            vec!["source".to_string(), "jq".to_string()]
        )]
    );
    // The artifact's own digest.
    assert_eq!(q(Some(ART), None), [(ART.to_string(), vec![])]);
    // The builder's binary.
    assert_eq!(q(Some(BIN), None).len(), 2);
    assert!(q(Some(&"9".repeat(64)), None).is_empty());
    // A uri: every artifact of a statement with that dependency, the dependency named.
    assert_eq!(
        by_uri(None, None, Some("https://tools.example/jq.tgz")),
        [
            (ART.to_string(), vec!["jq".to_string()]),
            (TOOL.to_string(), vec!["jq".to_string()])
        ]
    );
    assert_eq!(
        by_uri(None, None, Some("git+https://git.example/*")).len(),
        2
    );
    assert!(by_uri(None, None, Some("https://tools.example/jq")).is_empty());
    // With a digest, both describe one dependency: the tool's digest is not the source's.
    assert_eq!(
        by_uri(Some(TOOL), Some("0123456"), Some("https://tools.example/*")),
        [(
            ART.to_string(),
            vec!["source".to_string(), "jq".to_string()]
        )]
    );
    // Unless the digest is the artifact's own (the second statement built the tool's
    // digest, from a git+https source).
    assert_eq!(
        by_uri(Some(TOOL), None, Some("git+https://*")),
        [(TOOL.to_string(), vec!["source".to_string()])]
    );
    assert!(by_uri(Some(ART), None, Some("https://other.example/*")).is_empty());
}

#[test]
fn a_query_needs_a_well_formed_digest_or_commit() {
    let check = |d: Option<&str>, c: Option<&str>| {
        Query {
            digest: d.map(String::from),
            commit: c.map(String::from),
            uri: None,
        }
        .check()
    };
    let uri = |u: &str| {
        Query {
            uri: Some(u.into()),
            ..Query::default()
        }
        .check()
    };
    assert!(uri("https://tools.example/jq.tgz").is_ok());
    assert!(uri("https://tools.example/*").is_ok());
    for bad in ["", "*", "https://x/\u{1b}]52;c;x\u{7}"] {
        assert!(uri(bad).unwrap_err().starts_with("uri \""), "{bad:?}");
    }
    assert!(uri(&"u".repeat(MAX_URI + 1)).is_err());
    assert!(check(None, None)
        .unwrap_err()
        .contains("give a digest, a commit or a uri"));
    assert!(check(Some("abc"), None).unwrap_err().contains("digest"));
    assert!(check(Some(&"g".repeat(64)), None).is_err());
    assert!(check(None, Some("012345"))
        .unwrap_err()
        .contains("7 digits"));
    assert!(check(None, Some("0123456")).is_ok());
}
