use super::*;

fn record(n: u32, deps: Vec<Dependency>, subjects: &[(&str, &str)]) -> Record {
    Record {
        statement_sha256: format!("{n:064x}"),
        provenance: format!("/out/{n}/provenance.intoto.jsonl"),
        invocation_id: format!("inv{n}"),
        finished: "2026-11-26T10:00:00Z".into(),
        builder_id: "https://ci.example/pool-a".into(),
        signers: vec![KEY_A.into()],
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
const KEY_A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

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

#[test]
fn an_append_that_crashed_mid_line_does_not_refuse_every_later_one() {
    // A writer killed (or out of space) mid-write leaves a last line without its newline.
    // Under the lock no one else is writing it: it is dropped, and the next record is a line
    // of its own, not glued to the end of a broken one.
    let (_d, index) = sample_index();
    let mut f = OpenOptions::new().append(true).open(&index).unwrap();
    f.write_all(b"{\"statement_sha256\":\"3333").unwrap();
    drop(f);
    let third = record(3, vec![], &[("dist/third", &"c".repeat(64))]);
    assert_eq!(append(&index, &[third]).unwrap(), 1);
    let text = std::fs::read_to_string(&index).unwrap();
    assert!(text.ends_with('\n'), "{text}");
    for line in text.lines() {
        serde_json::from_str::<Record>(line).unwrap();
    }
    assert_eq!(found(&index, Query::default()).len(), 3);
}

#[test]
fn a_query_of_an_index_that_is_a_fifo_fails_at_once_instead_of_waiting() {
    let dir = crate::tools::testutil::TempDir::named("bulwark-inventory-fifo");
    let fifo = dir.join("inventory.jsonl");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || {
        let _ = tx.send(search(&path, &Query::default()).map(|h| h.len()));
    });
    let outcome = rx.recv_timeout(std::time::Duration::from_secs(5));
    if outcome.is_err() {
        // Release the stuck reader before failing.
        let _ = OpenOptions::new().write(true).open(&fifo);
    }
    let e = outcome.expect("query of a fifo index hangs").unwrap_err();
    assert!(format!("{e:#}").contains("not a regular file"), "{e:#}");
}

fn statement_json() -> serde_json::Value {
    use crate::provenance::statement::{BUILD_TYPE, SLSA_PROVENANCE_V1, STATEMENT_TYPE};
    serde_json::json!({
        "_type": STATEMENT_TYPE,
        "subject": [{ "name": "app", "digest": { "sha256": APP } }],
        "predicateType": SLSA_PROVENANCE_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": { "trust": "untrusted" },
                "internalParameters": { "weakened": [] },
                "resolvedDependencies": [
                    { "name": "source", "uri": "git+https://git.example/app.git", "digest": { "gitCommit": COMMIT } },
                ],
            },
            "runDetails": {
                "builder": { "id": "https://example.invalid/b" },
                "metadata": { "invocationId": "1", "startedOn": "2030-01-01T00:00:00Z", "finishedOn": "2030-01-01T00:00:01Z" },
            },
        },
    })
}

#[test]
fn a_provenance_file_swapped_after_listing_is_not_read_through_a_symlink_or_fifo() {
    // `provenance_files` lists regular files only (symlinks not followed); what is opened
    // afterwards must still be that: a symlink put in its place is not followed, a fifo put in
    // its place is not waited on.
    use crate::provenance::keys::{Algorithm, LocalKey};
    let key = LocalKey::generate(Algorithm::Ed25519).unwrap();
    let env = crate::provenance::dsse::sign(
        &serde_json::to_vec(&statement_json()).unwrap(),
        crate::provenance::dsse::IN_TOTO_PAYLOAD_TYPE,
        &key,
    )
    .unwrap();
    let dir = crate::tools::testutil::TempDir::named("bulwark-inventory-swap");
    let real = dir.join("elsewhere.json");
    std::fs::write(
        &real,
        crate::provenance::dsse::to_line(&env).unwrap() + "\n",
    )
    .unwrap();
    let keys = [key.public()];
    assert_eq!(verified_records(&real, &keys, None).unwrap().len(), 1);
    let link = dir.join("provenance.intoto.jsonl");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let e = verified_records(&link, &keys, None).unwrap_err();
    assert!(e.contains("not a regular file"), "{e}");
    let fifo = dir.join("other.intoto.jsonl");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // A writer that never writes: reading the fifo would wait for it forever.
    let writer = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (f2, k2) = (fifo.clone(), keys.to_vec());
    std::thread::spawn(move || {
        let _ = tx.send(verified_records(&f2, &k2, None).map(|r| r.len()));
    });
    let outcome = rx.recv_timeout(std::time::Duration::from_secs(5));
    drop(writer);
    let e = outcome.expect("reading a fifo hangs").unwrap_err();
    assert!(e.contains("not a regular file"), "{e}");
}

#[test]
fn filters_on_different_dependencies_or_the_artifact_combine() {
    let (_d, index) = sample_index();
    // Built from this commit with this jq: the commit is the source's, the digest jq's.
    let q = Query {
        commit: Some("0123456".into()),
        digest: Some(JQ.into()),
        ..Default::default()
    };
    assert_eq!(found(&index, q), ["dist/app.tar.gz"]);
    // This artifact, if it was built from this commit.
    let q = Query {
        commit: Some("0123456".into()),
        digest: Some(APP.into()),
        ..Default::default()
    };
    assert_eq!(found(&index, q), ["dist/app.tar.gz"]);
    // This artifact, if it used a tool from tools.example.
    let q = Query {
        uri: Some("https://tools.example/*".into()),
        digest: Some(APP.into()),
        ..Default::default()
    };
    assert_eq!(found(&index, q), ["dist/app.tar.gz"]);
    // Still every filter: another commit, or a jq that is not the one named, finds nothing.
    let q = Query {
        commit: Some("fffffff".into()),
        digest: Some(APP.into()),
        ..Default::default()
    };
    assert!(found(&index, q).is_empty());
    let q = Query {
        name: Some("jq".into()),
        digest: Some(COMMIT.into()),
        ..Default::default()
    };
    assert!(found(&index, q).is_empty());
}

#[test]
fn the_runs_own_record_only_looks_at_the_tail_and_mends_a_torn_last_line() {
    let (d, index) = sample_index();
    // A writer that died mid-line.
    let mut f = OpenOptions::new().append(true).open(&index).unwrap();
    f.write_all(b"{\"statement_sha256\":\"33").unwrap();
    drop(f);
    // A record appended the way `bulwark run` appends its own: no reading of the whole
    // index for duplicates (a garbage line in the middle is not even noticed), the torn tail
    // dropped first.
    let text = std::fs::read_to_string(&index).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(1, "garbage-in-the-middle");
    std::fs::write(&index, lines.join("\n")).unwrap();
    let mut locked = open_locked(&index).unwrap();
    drop_partial_tail(&mut locked, &index).unwrap();
    write_new(
        &mut locked,
        &index,
        &[record(7, vec![], &[("x", APP)])],
        &mut std::collections::HashMap::new(),
    )
    .unwrap();
    drop(locked);
    let text = std::fs::read_to_string(&index).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(
        line_statement(lines[3].as_bytes()),
        Some(&*format!("{:064x}", 7))
    );
    assert!(text.ends_with("}\n"));
    drop(d);
}

/// A whole record whose newline is missing (an index joined by hand) is answered, and the
/// next append ends its line instead of dropping it.
#[test]
fn a_whole_last_record_without_its_newline_is_answered_and_kept() {
    let (d, index) = sample_index();
    let before = std::fs::read_to_string(&index).unwrap();
    let all = Query::default();
    let want = found(&index, all.clone()).len();
    std::fs::write(&index, before.trim_end_matches('\n')).unwrap();
    assert_eq!(found(&index, all.clone()).len(), want);
    let mut locked = open_locked(&index).unwrap();
    drop_partial_tail(&mut locked, &index).unwrap();
    drop(locked);
    assert_eq!(std::fs::read_to_string(&index).unwrap(), before);
    assert_eq!(found(&index, all).len(), want);
    drop(d);
}

/// An index others may write is not answered from; another user's is not extended.
#[test]
fn an_index_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (d, index) = sample_index();
    std::fs::set_permissions(&index, std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = format!("{:#}", search(&index, &Query::default()).unwrap_err());
    assert!(err.contains("can be written by other users"), "{err}");
    std::fs::set_permissions(&index, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(search(&index, &Query::default()).is_ok());
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(&index, Some(65534), None).unwrap();
        let err = format!("{:#}", open_locked(&index).unwrap_err());
        assert!(err.contains("belongs to uid 65534"), "{err}");
        let mode = std::fs::metadata(&index).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "left as it was");
    } else {
        eprintln!("SKIP part: chown to another uid needs root");
    }
    drop(d);
}

#[test]
fn digests_are_indexed_in_lowercase_whoever_wrote_the_statement() {
    use crate::provenance::statement::ResourceDescriptor;
    let upper = "ABCDEF".repeat(10) + "ABCD";
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/statement-v1.json"),
    )
    .unwrap();
    let mut statement: Statement = serde_json::from_str(&text).unwrap();
    statement.subject[0]
        .digest
        .insert("sha256".into(), upper.clone());
    statement
        .predicate
        .build_definition
        .resolved_dependencies
        .push(ResourceDescriptor {
            name: Some("tool".into()),
            digest: [("sha256".to_string(), upper.clone())]
                .into_iter()
                .collect(),
            ..Default::default()
        });
    let r = Record::of(&statement, Path::new("/p"), &[]).unwrap();
    let lower = upper.to_ascii_lowercase();
    assert_eq!(r.subjects[0].sha256, lower);
    assert!(r
        .dependencies
        .iter()
        .any(|d| d.digest.get("sha256") == Some(&lower)));
}

#[test]
fn a_path_without_provenance_is_an_error_and_paths_are_recorded_absolute() {
    let dir = crate::tools::testutil::TempDir::named("bulwark-inventory-empty");
    std::fs::write(dir.join("notes.txt"), "").unwrap();
    let e = read_verified(&[dir.to_path_buf()], &[], None).unwrap_err();
    assert!(format!("{e:#}").contains("no provenance file"), "{e:#}");
    // A relative path: the outcome names the file absolutely.
    std::fs::write(dir.join("x.intoto.jsonl"), "not json\n").unwrap();
    let cwd = std::env::current_dir().unwrap();
    let rel = pathdiff(&dir, &cwd);
    let outcomes = read_verified(&[rel], &[], None).unwrap();
    assert!(outcomes[0].path.is_absolute(), "{:?}", outcomes[0].path);
    assert!(outcomes[0].records.is_err());
}

/// `path` relative to `base` (both absolute), through `..` as needed.
fn pathdiff(path: &Path, base: &Path) -> PathBuf {
    let ups = base.components().count() - 1;
    let mut rel = PathBuf::new();
    for _ in 0..ups {
        rel.push("..");
    }
    rel.join(path.strip_prefix("/").unwrap())
}

/// `statement_json()` claiming `builder`, signed by `key`, written as `name` under `dir`.
fn signed_file(
    dir: &Path,
    name: &str,
    builder: &str,
    key: &crate::provenance::keys::LocalKey,
) -> PathBuf {
    let mut v = statement_json();
    v["predicate"]["runDetails"]["builder"]["id"] = builder.into();
    let env = crate::provenance::dsse::sign(
        &serde_json::to_vec(&v).unwrap(),
        crate::provenance::dsse::IN_TOTO_PAYLOAD_TYPE,
        key,
    )
    .unwrap();
    let p = dir.join(name);
    std::fs::write(&p, crate::provenance::dsse::to_line(&env).unwrap() + "\n").unwrap();
    p
}

#[test]
fn a_key_claiming_another_builder_s_id_is_refused_when_builder_ids_are_bound_to_keys() {
    use crate::provenance::keys::{Algorithm, LocalKey, Signer};
    let a = LocalKey::generate(Algorithm::Ed25519).unwrap();
    let b = LocalKey::generate(Algorithm::P256).unwrap();
    let dir = crate::tools::testutil::TempDir::named("bulwark-inventory-bound");
    let forged = signed_file(&dir, "forged.intoto.jsonl", "https://ci.example/b", &a);
    let own = signed_file(&dir, "own.intoto.jsonl", "https://ci.example/a", &a);
    let keys = [a.public(), b.public()];
    let bound: BuilderKeys = [
        (
            "https://ci.example/a".to_string(),
            vec![a.keyid().to_string()],
        ),
        (
            "https://ci.example/b".to_string(),
            vec![b.keyid().to_string()],
        ),
    ]
    .into_iter()
    .collect();
    let e = verified_records(&forged, &keys, Some(&bound)).unwrap_err();
    assert!(
        e.starts_with("builder_keys: runDetails.builder.id is \"https://ci.example/b\"")
            && e.contains(&format!("signed by [{}]", a.keyid()))
            && e.contains(b.keyid())
            && e.contains("add its key id to the builder's entry in [builder_keys]"),
        "{e}"
    );
    // A builder id the table does not name is refused too.
    let stray = signed_file(&dir, "stray.intoto.jsonl", "https://ci.example/c", &a);
    let e = verified_records(&stray, &keys, Some(&bound)).unwrap_err();
    assert!(e.contains("which builder_keys binds to no key"), "{e}");
    // The one signed by its builder's key is indexed, naming that key (and not the other).
    let records = verified_records(&own, &keys, Some(&bound)).unwrap();
    assert_eq!(records[0].builder_id, "https://ci.example/a");
    assert_eq!(records[0].signers, [a.keyid()]);
    // Unbound, the forged one goes in, but says who signed it.
    let records = verified_records(&forged, &keys, None).unwrap();
    assert_eq!(records[0].builder_id, "https://ci.example/b");
    assert_eq!(records[0].signers, [a.keyid()]);
}

/// An index line as written before signers were recorded (statement `n`, one jq dependency,
/// one artifact `name`).
fn old_line(n: u32, name: &str) -> String {
    format!(
        "{{\"statement_sha256\":\"{n:064x}\",\"provenance\":\"/out/{n}/provenance.intoto.jsonl\",\
         \"invocation_id\":\"inv{n}\",\"finished\":\"2026-11-26T10:00:00Z\",\
         \"builder_id\":\"https://ci.example/pool-a\",\"trust\":\"trusted\",\
         \"dependencies\":[{{\"name\":\"jq\",\"uri\":\"https://tools.example/jq-1.7.tar.gz\",\
         \"digest\":{{\"sha256\":\"{JQ}\"}}}}],\"subjects\":[{{\"name\":\"{name}\",\
         \"sha256\":\"{}\"}}]}}",
        "d".repeat(64)
    )
}

#[test]
fn an_index_line_written_before_signers_were_recorded_still_reads() {
    let (d, index) = sample_index();
    let old = d.join("old.jsonl");
    // A line as earlier versions wrote it, field for field: no `signers`.
    std::fs::write(&old, format!("{}\n", old_line(7, "dist/old.tar.gz"))).unwrap();
    std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let hits = search(
        &old,
        &Query {
            digest: Some(JQ.into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(hits.len(), 1);
    assert!(hits[0].signers.is_empty());
    // Its JSON hit has no signers (unknown), rather than an empty list (nobody).
    let json = serde_json::to_value(&hits[0]).unwrap();
    assert!(json.get("signers").is_none(), "{json}");
    // New lines append after it; the old one is still answered.
    assert_eq!(
        append(&old, &[record(8, vec![], &[("dist/new", APP)])]).unwrap(),
        1
    );
    assert_eq!(found(&old, Query::default()).len(), 2);
    // The sample index's records carry their signer, and the hit shows it.
    let hits = search(&index, &Query::default()).unwrap();
    assert!(hits.iter().all(|h| h.signers == [KEY_A]), "{hits:?}");
}

#[test]
fn a_query_by_signer_finds_what_that_key_signed_and_counts_what_it_cannot_tell() {
    let (d, index) = sample_index();
    let mut q = Query {
        signer: Some(KEY_A.to_ascii_uppercase().replacen("SHA256", "sha256", 1)),
        ..Default::default()
    };
    q.check().unwrap();
    let a = answer(&index, &q).unwrap();
    assert_eq!(a.hits.len(), 2);
    assert_eq!(a.unknown_signer, 0);
    let other = format!("sha256:{}", "b".repeat(64));
    q.signer = Some(other.clone());
    let a = answer(&index, &q).unwrap();
    assert!(a.hits.is_empty());
    // The key id text elsewhere in a line (a job names its outputs) is not a signer: the
    // substring only selects lines to parse.
    let named = record(6, vec![], &[(other.as_str(), APP)]);
    assert_eq!(append(&index, &[named]).unwrap(), 1);
    assert!(answer(&index, &q).unwrap().hits.is_empty());
    // A record without a signer cannot match, and is counted so the answer says so.
    let mut f = OpenOptions::new().append(true).open(&index).unwrap();
    f.write_all(format!("{}\n", old_line(5, "dist/old")).as_bytes())
        .unwrap();
    drop(f);
    q.signer = Some(KEY_A.into());
    let a = answer(&index, &q).unwrap();
    assert_eq!((a.hits.len(), a.unknown_signer), (3, 1));
    // Not a key id: the option is named.
    let mut bad = Query {
        signer: Some("abc".into()),
        ..Default::default()
    };
    assert!(bad.check().unwrap_err().starts_with("--signer"));
    drop(d);
}

#[test]
fn a_statement_signed_again_by_another_key_is_recorded_and_found_by_either_key() {
    let (d, index) = sample_index();
    let key_b = format!("sha256:{}", "b".repeat(64));
    let first = record(9, vec![], &[("dist/app", APP)]);
    assert_eq!(append(&index, std::slice::from_ref(&first)).unwrap(), 1);
    // The same statement again, signed by the same key: nothing new.
    assert_eq!(append(&index, std::slice::from_ref(&first)).unwrap(), 0);
    // Countersigned (A and B): recorded, so that B's signature is known.
    let countersigned = Record {
        signers: vec![KEY_A.into(), key_b.clone()],
        ..first.clone()
    };
    assert_eq!(append(&index, &[countersigned]).unwrap(), 1);
    // B alone adds nothing more: both keys are recorded for it now.
    let by_b = Record {
        signers: vec![key_b.clone()],
        ..first.clone()
    };
    assert_eq!(append(&index, &[by_b]).unwrap(), 0);
    // One artifact in every answer, with every key that signed its statement.
    let q = |signer: Option<&str>| Query {
        signer: signer.map(str::to_owned),
        ..Default::default()
    };
    for signer in [None, Some(KEY_A), Some(key_b.as_str())] {
        let hits = search(&index, &q(signer)).unwrap();
        let ours: Vec<_> = hits.iter().filter(|h| h.invocation_id == "inv9").collect();
        assert_eq!(ours.len(), 1, "{signer:?}: {hits:?}");
        if signer != Some(KEY_A) {
            assert_eq!(ours[0].signers, [KEY_A, key_b.as_str()], "{signer:?}");
        }
    }
    // A statement an old index holds without signers gets them when indexed again.
    let old = d.join("old.jsonl");
    std::fs::write(&old, format!("{}\n", old_line(7, "dist/old"))).unwrap();
    std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let again = Record {
        provenance: "/out/7/provenance.intoto.jsonl".into(),
        ..record(7, vec![], &[("dist/old", &"d".repeat(64))])
    };
    assert_eq!(append(&old, &[again]).unwrap(), 1);
    let a = answer(
        &old,
        &Query {
            signer: Some(KEY_A.into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(a.hits.len(), 1, "{:?}", a.hits);
    assert_eq!(a.hits[0].signers, [KEY_A]);
}

#[test]
fn records_without_signers_are_counted_only_when_they_match_the_rest_of_the_query() {
    let (d, _) = sample_index();
    let old = d.join("old.jsonl");
    // Two records without signers; only the first used jq.
    let other_tool = old_line(6, "dist/six").replace(JQ, &"e".repeat(64));
    std::fs::write(
        &old,
        format!("{}\n{other_tool}\n", old_line(5, "dist/five")),
    )
    .unwrap();
    std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let by_digest = |digest: String| Query {
        signer: Some(KEY_A.into()),
        digest: Some(digest),
        ..Default::default()
    };
    let a = answer(&old, &by_digest(JQ.into())).unwrap();
    assert_eq!((a.hits.len(), a.unknown_signer), (0, 1));
    let a = answer(&old, &by_digest("f".repeat(64))).unwrap();
    assert_eq!((a.hits.len(), a.unknown_signer), (0, 0));
    // Its line holds the text of every filter (the artifact's name, not a tool's), yet it
    // would not match them: not counted either.
    let a = answer(
        &old,
        &Query {
            name: Some("dist/five".into()),
            ..by_digest(JQ.into())
        },
    )
    .unwrap();
    assert_eq!((a.hits.len(), a.unknown_signer), (0, 0));
    // A record with signers written as Python's json.dumps writes it (`": "`, `", "`) is
    // judged by its signers like any other.
    let spaced = serde_json::to_string(&record(8, vec![], &[("dist/eight", APP)]))
        .unwrap()
        .replace("\":", "\": ")
        .replace(",\"", ", \"");
    assert!(spaced.contains("\"signers\": ["), "{spaced}");
    std::fs::write(&old, format!("{spaced}\n")).unwrap();
    let a = answer(
        &old,
        &Query {
            signer: Some(KEY_A.into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((a.hits.len(), a.unknown_signer), (1, 0));
}
