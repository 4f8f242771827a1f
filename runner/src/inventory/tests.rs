use super::*;

fn record(n: u32, deps: Vec<Dependency>, subjects: &[(&str, &str)]) -> Record {
    Record {
        statement_sha256: format!("{n:064x}"),
        provenance: format!("/out/{n}/provenance.intoto.jsonl"),
        invocation_id: format!("inv{n}"),
        finished: "2026-11-26T10:00:00Z".into(),
        builder_id: "https://ci.example/pool-a".into(),
        trust: Some("trusted".into()),
        dependencies: deps,
        subjects: subjects
            .iter()
            .map(|(name, sha)| Subject {
                name: name.to_string(),
                sha256: sha.to_string(),
            })
            .collect(),
    }
}

fn dep(name: &str, uri: &str, algo: &str, value: &str) -> Dependency {
    Dependency {
        name: Some(name.into()),
        uri: Some(uri.into()),
        digest: [(algo.to_string(), value.to_string())]
            .into_iter()
            .collect(),
        builder: false,
    }
}

const JQ: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const JQ_OTHER: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const APP: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn sample_index() -> (crate::tools::testutil::TempDir, PathBuf) {
    let dir = crate::tools::testutil::TempDir::named("bulwark-inventory");
    let index = dir.join("inventory.jsonl");
    let records = [
        record(
            1,
            vec![
                dep(
                    "source",
                    "git+https://git.example/app.git@refs/heads/main",
                    "gitCommit",
                    COMMIT,
                ),
                dep("jq", "https://tools.example/jq-1.7.tar.gz", "sha256", JQ),
            ],
            &[("dist/app.tar.gz", APP)],
        ),
        record(
            2,
            vec![dep(
                "jq",
                "https://tools.example/jq-1.6.tar.gz",
                "sha256",
                JQ_OTHER,
            )],
            &[("dist/other.tar.gz", &"b".repeat(64))],
        ),
    ];
    assert_eq!(append(&index, &records).unwrap(), 2);
    (dir, index)
}

fn found(index: &Path, mut q: Query) -> Vec<String> {
    q.check().unwrap();
    search(index, &q)
        .unwrap()
        .into_iter()
        .map(|h| h.artifact.name)
        .collect()
}

#[test]
fn a_query_finds_the_artifacts_that_used_a_tool_a_commit_or_a_source() {
    let (_d, index) = sample_index();
    let q = |f: fn(&mut Query)| {
        let mut q = Query::default();
        f(&mut q);
        q
    };
    assert_eq!(
        found(&index, q(|q| q.digest = Some(JQ.into()))),
        ["dist/app.tar.gz"]
    );
    assert_eq!(
        found(
            &index,
            q(|q| q.digest = Some(format!("sha256:{}", JQ_OTHER.to_uppercase())))
        ),
        ["dist/other.tar.gz"]
    );
    // An artifact's own digest: where it comes from.
    assert_eq!(
        found(&index, q(|q| q.digest = Some(APP.into()))),
        ["dist/app.tar.gz"]
    );
    assert_eq!(
        found(&index, q(|q| q.commit = Some("0123456".into()))),
        ["dist/app.tar.gz"]
    );
    assert!(found(&index, q(|q| q.commit = Some("0123457".into()))).is_empty());
    assert_eq!(
        found(
            &index,
            q(|q| q.uri = Some("https://tools.example/*".into()))
        ),
        ["dist/app.tar.gz", "dist/other.tar.gz"]
    );
    assert_eq!(
        found(
            &index,
            q(|q| q.uri = Some("https://tools.example/jq-1.6.tar.gz".into()))
        ),
        ["dist/other.tar.gz"]
    );
    // Filters combine: jq by name, and the 1.7 digest.
    assert_eq!(
        found(
            &index,
            q(|q| {
                q.name = Some("jq".into());
                q.digest = Some(JQ.into());
            })
        ),
        ["dist/app.tar.gz"]
    );
    assert!(found(&index, q(|q| q.builder = Some("https://other".into()))).is_empty());
    assert_eq!(found(&index, Query::default()).len(), 2);
    // What matched is said.
    let mut query = q(|q| q.commit = Some(COMMIT.into()));
    query.check().unwrap();
    let hits = search(&index, &query).unwrap();
    assert_eq!(hits[0].matched[0].name.as_deref(), Some("source"));
    assert_eq!(hits[0].invocation_id, "inv1");
}

#[test]
fn bad_queries_name_the_option() {
    for (mut q, why) in [
        (
            Query {
                digest: Some("xyz".into()),
                ..Default::default()
            },
            "--digest",
        ),
        (
            Query {
                digest: Some("abcd".into()),
                ..Default::default()
            },
            "--digest",
        ),
        (
            Query {
                commit: Some("012345".into()),
                ..Default::default()
            },
            "at least its first 7",
        ),
        (
            Query {
                commit: Some("g123456".into()),
                ..Default::default()
            },
            "--commit",
        ),
        (
            Query {
                uri: Some(String::new()),
                ..Default::default()
            },
            "--uri: must not be empty",
        ),
    ] {
        let e = q.check().unwrap_err();
        assert!(e.contains(why), "{e}");
    }
}

#[test]
fn a_statement_is_indexed_once_and_a_damaged_index_is_an_error_naming_the_line() {
    let (_d, index) = sample_index();
    // The same two statements again (a job's .intoto.jsonl and .sigstore.json): nothing new.
    let again = record(1, vec![], &[]);
    assert_eq!(append(&index, &[again]).unwrap(), 0);
    assert_eq!(std::fs::read_to_string(&index).unwrap().lines().count(), 2);
    // A line that is not a record: every query says so, whatever it asks.
    let mut f = OpenOptions::new().append(true).open(&index).unwrap();
    f.write_all(b"garbage\n").unwrap();
    let e = search(
        &index,
        &Query {
            commit: Some("fffffff".into()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("line 3: not an inventory record"),
        "{e:#}"
    );
    let e = append(&index, &[]).unwrap_err();
    assert!(format!("{e:#}").contains("line 3"), "{e:#}");
    // A last line still being written (no newline yet) is not there yet, and no error.
    let (_d2, fresh) = sample_index();
    let mut f = OpenOptions::new().append(true).open(&fresh).unwrap();
    f.write_all(b"{\"statement_sha256\":\"3").unwrap();
    assert_eq!(found(&fresh, Query::default()).len(), 2);
}

#[test]
fn the_index_is_the_runner_s_alone_and_never_written_through_a_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let (d, index) = sample_index();
    let mode = std::fs::metadata(&index).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
    let target = d.join("elsewhere");
    std::fs::write(&target, "").unwrap();
    let link = d.join("link.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(append(&link, &[record(9, vec![], &[])]).is_err());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "");
}
