use super::*;
use crate::testutil::TempDir;
use bulwark_protocol::control::ResultReport;

pub(crate) fn spec(timeout: Option<&str>) -> JobSpec {
    let mut spec: JobSpec = serde_json::from_value(serde_json::json!({
        "version": 1,
        "name": "build",
        "source": {
            "git": "https://git.example.com/acme/app.git",
            "commit": "0123456789abcdef0123456789abcdef01234567",
            "ref": "refs/heads/main"
        },
        "steps": [{"name": "make", "run": "make"}]
    }))
    .unwrap();
    spec.resources.timeout = timeout.map(str::to_owned);
    spec
}

fn runner(id: &str) -> Runner {
    Runner {
        id: id.into(),
        name: format!("host-{id}"),
        public_key: "unused here".into(),
        registered_at: 0,
        removed_at: None,
    }
}

/// A database with one registered runner per id in `runners`.
fn db_with(dir: &TempDir, runners: &[&str]) -> Db {
    let mut db = Db::create(&dir.path().join(DB_NAME), "https://ci.example.com").unwrap();
    for (i, id) in runners.iter().enumerate() {
        let token = format!("token-{i}");
        db.add_registration_token(&token, 100).unwrap();
        db.register_runner(&token, &runner(id), 10).unwrap();
    }
    db
}

const ART: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const TOOL: &str = "1111111111111111111111111111111111111111111111111111111111111111";

fn provenance() -> String {
    crate::testutil::provenance_line(ART, COMMIT, TOOL, &"3".repeat(64))
}

fn report() -> ResultReport {
    ResultReport {
        result: serde_json::json!({"status": "succeeded"}),
        provenance: Some(format!("{}\n", provenance())),
        logs: vec![bulwark_protocol::control::LogFile {
            name: "job.log".into(),
            size: 3,
            sha256: "a".repeat(64),
        }],
    }
}

#[test]
fn a_database_is_created_once_in_wal_mode_and_reopens_with_its_issuer() {
    let dir = TempDir::new("state");
    let path = dir.path().join(DB_NAME);
    let db = Db::create(&path, "https://ci.example.com").unwrap();
    let mode: String = db
        .conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    drop(db);
    assert!(matches!(
        Db::create(&path, "https://other.example.com"),
        Err(StateError::Exists { .. })
    ));
    assert_eq!(
        Db::open(&path).unwrap().issuer().unwrap(),
        "https://ci.example.com"
    );
}

#[test]
fn unknown_used_and_expired_registration_tokens_are_refused_alike() {
    let dir = TempDir::new("state");
    let mut db = db_with(&dir, &[]);
    db.add_registration_token("fresh", 100).unwrap();
    db.add_registration_token("old", 50).unwrap();
    let refused =
        |r: Result<(), StateError>| matches!(r, Err(StateError::RegistrationTokenNotValid));
    assert!(refused(db.register_runner("unknown", &runner("r1"), 60)));
    assert!(refused(db.register_runner("old", &runner("r1"), 60)));
    db.register_runner("fresh", &runner("r1"), 60).unwrap();
    assert!(refused(db.register_runner("fresh", &runner("r2"), 61)));
    assert_eq!(db.runners().unwrap().len(), 1);
}

#[test]
fn two_registrations_racing_with_one_token_get_exactly_one_runner() {
    let dir = TempDir::new("state");
    let path = dir.path().join(DB_NAME);
    let db = db_with(&dir, &[]);
    db.add_registration_token("one", u64::MAX / 2).unwrap();
    for round in 0..20 {
        let token = format!("race-{round}");
        db.add_registration_token(&token, u64::MAX / 2).unwrap();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let handles: Vec<_> = (0..2)
            .map(|t| {
                let (path, token, barrier) = (path.clone(), token.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut db = Db::open(&path).unwrap();
                    barrier.wait();
                    db.register_runner(&token, &runner(&format!("r-{round}-{t}")), 1)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let wins = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {results:?}");
        assert!(results
            .iter()
            .any(|r| matches!(r, Err(StateError::RegistrationTokenNotValid))));
    }
    assert_eq!(db.runners().unwrap().len(), 20);
}

#[test]
fn a_nonce_is_accepted_once_and_forgotten_after_it_expires() {
    let dir = TempDir::new("state");
    let mut db = db_with(&dir, &["r1", "r2"]);
    db.use_nonce("r1", "nonce-aaaaaaaaaaaa", 400, 100).unwrap();
    assert!(matches!(
        db.use_nonce("r1", "nonce-aaaaaaaaaaaa", 400, 101),
        Err(StateError::NonceReused)
    ));
    // Another runner's nonces are its own.
    db.use_nonce("r2", "nonce-aaaaaaaaaaaa", 400, 101).unwrap();
    // Pruned once expired (by then its timestamp is refused anyway).
    db.use_nonce("r1", "nonce-aaaaaaaaaaaa", 900, 401).unwrap();
    let count: i64 = db
        .conn
        .query_row("SELECT COUNT(*) FROM nonces", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 1);
}

#[test]
fn a_removed_runner_cannot_use_a_nonce_and_its_leased_jobs_become_lost() {
    let dir = TempDir::new("state");
    let mut db = db_with(&dir, &["r1"]);
    db.submit_job("job-1", &spec(None), Trust::Trusted, 100)
        .unwrap();
    db.lease("r1", 100).unwrap().unwrap();
    assert!(db.remove_runner("r1", 101).unwrap());
    assert!(!db.remove_runner("r1", 102).unwrap());
    assert!(matches!(
        db.use_nonce("r1", "nonce-bbbbbbbbbbbb", 500, 102),
        Err(StateError::RunnerNotActive { .. })
    ));
    assert_eq!(db.job("job-1", 102).unwrap().unwrap().state, JobState::Lost);
    assert!(db.active_runner("r1").unwrap().is_none());
}

#[test]
fn leases_go_oldest_first_for_the_job_timeout_plus_ten_minutes() {
    let dir = TempDir::new("state");
    let mut db = db_with(&dir, &["r1"]);
    assert!(db.lease("r1", 100).unwrap().is_none());
    db.submit_job("job-b", &spec(Some("5m")), Trust::Untrusted, 200)
        .unwrap();
    db.submit_job("job-a", &spec(None), Trust::Trusted, 100)
        .unwrap();
    let first = db.lease("r1", 300).unwrap().unwrap();
    assert_eq!(first.job_id, "job-a");
    assert_eq!(first.trust, Trust::Trusted);
    assert_eq!(first.expires_at, 300 + 3600 + 600, "default timeout 1h");
    let second = db.lease("r1", 300).unwrap().unwrap();
    assert_eq!(second.job_id, "job-b");
    assert_eq!(second.expires_at, 300 + 300 + 600);
    assert!(db.lease("r1", 300).unwrap().is_none());
    let job = db.job("job-a", 301).unwrap().unwrap();
    assert_eq!(job.state, JobState::Leased);
    assert_eq!(job.runner_id.as_deref(), Some("r1"));
}

/// A queued job whose stored spec no longer parses is finished as refused, saying why, and
/// the next one is leased: it does not fail every lease request and hold the queue.
#[test]
fn a_queued_job_whose_record_does_not_parse_is_refused_and_the_queue_goes_on() {
    let dir = TempDir::new("state");
    let mut db = db_with(&dir, &["r1"]);
    db.submit_job("job-a", &spec(None), Trust::Trusted, 100)
        .unwrap();
    db.submit_job("job-b", &spec(None), Trust::Untrusted, 200)
        .unwrap();
    db.conn
        .execute(
            "UPDATE jobs SET spec = '{\"version\": 1, \"new_field\": true}' WHERE id = 'job-a'",
            [],
        )
        .unwrap();
    let lease = db.lease("r1", 300).unwrap().unwrap();
    assert_eq!(lease.job_id, "job-b");
    let (state, result): (String, String) = db
        .conn
        .query_row(
            "SELECT state, result FROM jobs WHERE id = 'job-a'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(state, "finished");
    let result: serde_json::Value = serde_json::from_str(&result).unwrap();
    assert_eq!(result["status"], "refused", "{result}");
    assert_eq!(result["trust"], "trusted", "{result}");
    assert_eq!(result["job"], "build", "{result}");
    let reason = result["reason"].as_str().unwrap();
    assert!(
        reason.contains("stored spec") && reason.contains("submit it again"),
        "{reason}"
    );
    // Nothing else queued: nothing, and no error.
    assert!(db.lease("r1", 300).unwrap().is_none());
    // A trust level that does not parse is set to what the result says, so that the list of
    // jobs, which reads it, still reads.
    db.submit_job("job-d", &spec(None), Trust::Trusted, 250)
        .unwrap();
    db.conn
        .execute("UPDATE jobs SET trust = 'root' WHERE id = 'job-d'", [])
        .unwrap();
    assert!(db.lease("r1", 300).unwrap().is_none());
    let listed = db.list_jobs(10, 300).unwrap();
    assert_eq!(listed.len(), 3);
    let d = db.job("job-d", 300).unwrap().unwrap();
    assert_eq!(d.state, JobState::Finished);
    assert_eq!(d.trust, Trust::Untrusted);
    // A leased job whose record stops parsing is not offered again (nor an error): its lease
    // ends and it is lost.
    db.conn
        .execute("UPDATE jobs SET spec = 'not json' WHERE id = 'job-b'", [])
        .unwrap();
    assert!(db.offer("r1", Some(&[]), 301).unwrap().is_none());
    // Nor does it hide a lost answer leased after it.
    db.submit_job("job-c", &spec(None), Trust::Untrusted, 400)
        .unwrap();
    assert_eq!(db.lease("r1", 401).unwrap().unwrap().job_id, "job-c");
    let again = db.offer("r1", Some(&[]), 402).unwrap().unwrap();
    assert!(again.again && again.lease.job_id == "job-c", "{again:?}");
}

#[test]
fn a_lease_that_ends_without_a_result_makes_the_job_lost_not_queued() {
    let dir = TempDir::new("state");
    let mut db = db_with(&dir, &["r1", "r2"]);
    db.submit_job("job-1", &spec(Some("1m")), Trust::Trusted, 100)
        .unwrap();
    let lease = db.lease("r1", 100).unwrap().unwrap();
    assert_eq!(lease.expires_at, 100 + 60 + 600);
    // Another runner asking after the end finds nothing: the job is lost, not re-queued.
    assert!(db.lease("r2", lease.expires_at).unwrap().is_none());
    assert_eq!(
        db.job("job-1", lease.expires_at).unwrap().unwrap().state,
        JobState::Lost
    );
    assert!(matches!(
        db.record_result("job-1", "r1", &report(), lease.expires_at),
        Err(StateError::LeaseExpired { .. })
    ));
}

/// `holding` as the API hands it over.
fn held(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

/// What `runner` is offered holding `ids`: the job, and whether it was offered again.
fn offered(db: &mut Db, runner: &str, ids: Option<&[&str]>, now: u64) -> Option<(String, bool)> {
    let ids = ids.map(held);
    db.offer(runner, ids.as_deref(), now)
        .unwrap()
        .map(|o| (o.lease.job_id, o.again))
}

/// A lease whose answer was lost is offered again to the runner holding it, once that runner
/// says what it holds: only to it, only while the lease lasts, never once cancelled, never
/// when the runner lists it, and before any new job. A runner that says nothing is answered
/// as before.
#[test]
fn a_job_leased_to_a_runner_that_does_not_list_it_is_offered_to_it_again_first() {
    let dir = TempDir::new("state");
    let mut db = db_with(&dir, &["r1", "r2"]);
    for (id, at) in [("job-1", 100), ("job-2", 101), ("job-3", 102)] {
        db.submit_job(id, &spec(Some("1m")), Trust::Trusted, at)
            .unwrap();
    }
    // Leased, the answers lost on the way: r1 holds job-2 and job-1 (leased in that order).
    db.conn
        .execute("UPDATE jobs SET submitted_at = 99 WHERE id = 'job-2'", [])
        .unwrap();
    assert_eq!(db.lease("r1", 200).unwrap().unwrap().job_id, "job-2");
    let first = db.lease("r1", 210).unwrap().unwrap();
    assert_eq!(first.job_id, "job-1");
    assert_eq!(db.lease("r2", 220).unwrap().unwrap().job_id, "job-3");
    // A runner that says nothing of what it holds (`{}`, or a runner from before) gets
    // nothing again: the queue is empty.
    assert_eq!(offered(&mut db, "r1", None, 300), None);
    // Holding nothing: the oldest lease first (job-2, leased at 200), the same lease.
    let again = db.offer("r1", Some(&[]), 300).unwrap().unwrap();
    assert!(again.again);
    assert_eq!(again.lease.job_id, "job-2");
    assert_eq!(
        again.lease.expires_at,
        200 + 60 + 600,
        "the lease is not renewed"
    );
    assert_eq!(again.lease.trust, Trust::Trusted);
    assert_eq!(again.lease.spec, spec(Some("1m")));
    let job = db.job("job-2", 300).unwrap().unwrap();
    assert_eq!(
        (job.state, job.runner_id.as_deref(), job.lease_expires_at),
        (JobState::Leased, Some("r1"), Some(860))
    );
    assert_eq!(
        offered(&mut db, "r1", Some(&["job-2"]), 300),
        Some(("job-1".into(), true))
    );
    // Everything listed: nothing again, and nothing of another runner's.
    assert_eq!(offered(&mut db, "r1", Some(&["job-1", "job-2"]), 300), None);
    assert_eq!(
        offered(&mut db, "r2", Some(&[]), 300),
        Some(("job-3".into(), true))
    );
    assert_eq!(offered(&mut db, "r2", Some(&["job-3"]), 300), None);
    // A job offered again comes before a queued one; the queued one is leased once every
    // job leased to the runner is listed.
    db.submit_job("job-4", &spec(Some("1m")), Trust::Untrusted, 301)
        .unwrap();
    assert_eq!(
        offered(&mut db, "r1", Some(&["job-2"]), 302),
        Some(("job-1".into(), true))
    );
    let fresh = db
        .offer("r1", Some(&held(&["job-1", "job-2"])), 303)
        .unwrap()
        .unwrap();
    assert_eq!((fresh.lease.job_id.as_str(), fresh.again), ("job-4", false));
    assert_eq!(fresh.lease.expires_at, 303 + 60 + 600);
    // Finished: never again.
    db.record_result("job-4", "r1", &report(), 304).unwrap();
    assert_eq!(offered(&mut db, "r1", Some(&["job-1", "job-2"]), 305), None);
    // Cancelled by the operator: not offered again (its runner, if it holds it, stops it).
    assert!(matches!(
        db.cancel("job-2", 310).unwrap(),
        Cancelled::Requested
    ));
    assert_eq!(
        offered(&mut db, "r1", Some(&[]), 311),
        Some(("job-1".into(), true))
    );
    assert_eq!(offered(&mut db, "r1", Some(&["job-1"]), 311), None);
    // A removed runner is offered nothing, not even what was leased to it.
    assert!(db.remove_runner("r2", 400).unwrap());
    assert!(matches!(
        db.offer("r2", Some(&[]), 401),
        Err(StateError::RunnerNotActive { .. })
    ));
    // Past its lease's end: lost, not offered.
    assert_eq!(offered(&mut db, "r1", Some(&[]), 870), None);
    assert_eq!(db.job("job-1", 870).unwrap().unwrap().state, JobState::Lost);
}

#[test]
fn a_late_result_is_refused_and_records_the_job_as_lost() {
    let dir = TempDir::new("state");
    let mut db = db_with(&dir, &["r1"]);
    db.submit_job("job-1", &spec(Some("1m")), Trust::Trusted, 100)
        .unwrap();
    let lease = db.lease("r1", 100).unwrap().unwrap();
    assert!(matches!(
        db.record_result("job-1", "r1", &report(), lease.expires_at + 1),
        Err(StateError::LeaseExpired { .. })
    ));
    let job = db.job("job-1", 0).unwrap().unwrap();
    assert_eq!(job.state, JobState::Lost);
    assert!(job.result.is_none());
}

#[test]
fn a_result_is_taken_once_and_only_from_the_lease_holder() {
    let dir = TempDir::new("state");
    let mut db = db_with(&dir, &["r1", "r2"]);
    db.submit_job("job-1", &spec(None), Trust::Untrusted, 100)
        .unwrap();
    db.submit_job("job-2", &spec(None), Trust::Untrusted, 101)
        .unwrap();
    assert!(
        matches!(
            db.record_result("job-1", "r1", &report(), 150),
            Err(StateError::NotLeasedToRunner { .. })
        ),
        "a queued job takes no result"
    );
    db.lease("r1", 200).unwrap().unwrap();
    assert!(matches!(
        db.record_result("job-1", "r2", &report(), 201),
        Err(StateError::NotLeasedToRunner { .. })
    ));
    assert!(matches!(
        db.record_result("job-nope", "r1", &report(), 201),
        Err(StateError::NotLeasedToRunner { .. })
    ));
    db.record_result("job-1", "r1", &report(), 202).unwrap();
    assert!(matches!(
        db.record_result("job-1", "r1", &report(), 203),
        Err(StateError::AlreadyFinished { .. })
    ));
    let job = db.job("job-1", 204).unwrap().unwrap();
    assert_eq!(job.state, JobState::Finished);
    assert_eq!(job.result, Some(report()));
}

#[test]
fn identity_tokens_are_only_for_a_trusted_job_with_a_live_lease_held_by_the_asker() {
    let dir = TempDir::new("state");
    let mut db = db_with(&dir, &["r1", "r2"]);
    db.submit_job("trusted", &spec(Some("1m")), Trust::Trusted, 100)
        .unwrap();
    db.submit_job("untrusted", &spec(Some("1m")), Trust::Untrusted, 101)
        .unwrap();
    db.submit_job("queued", &spec(Some("1m")), Trust::Trusted, 102)
        .unwrap();
    db.lease("r1", 200).unwrap().unwrap();
    db.lease("r1", 200).unwrap().unwrap();
    assert_eq!(
        db.job_for_id_token("trusted", "r1", 201).unwrap().id,
        "trusted"
    );
    let e = db.job_for_id_token("untrusted", "r1", 201).unwrap_err();
    assert_eq!(
        e.to_string(),
        "job untrusted is untrusted: untrusted jobs never get identity tokens"
    );
    assert!(matches!(
        db.job_for_id_token("trusted", "r2", 201),
        Err(StateError::NotLeasedToRunner { .. })
    ));
    assert!(matches!(
        db.job_for_id_token("queued", "r1", 201),
        Err(StateError::NotLeasedToRunner { .. })
    ));
    assert!(matches!(
        db.job_for_id_token("missing", "r1", 201),
        Err(StateError::NotLeasedToRunner { .. })
    ));
    assert!(matches!(
        db.job_for_id_token("trusted", "r1", 200 + 60 + 600),
        Err(StateError::LeaseOver { .. })
    ));
    db.record_result("untrusted", "r1", &report(), 202).unwrap();
    assert!(matches!(
        db.job_for_id_token("untrusted", "r1", 203),
        Err(StateError::LeaseOver { .. })
    ));
}

#[test]
fn a_removed_runner_is_never_leased_a_job() {
    // The removal may commit between a request's nonce check and its lease transaction.
    let dir = TempDir::new("state");
    let mut db = db_with(&dir, &["r1"]);
    db.submit_job("job-1", &spec(None), Trust::Trusted, 100)
        .unwrap();
    assert!(db.remove_runner("r1", 101).unwrap());
    assert!(matches!(
        db.lease("r1", 102),
        Err(StateError::RunnerNotActive { .. })
    ));
    assert_eq!(
        db.job("job-1", 102).unwrap().unwrap().state,
        JobState::Queued
    );
    assert!(matches!(
        db.lease("nobody", 102),
        Err(StateError::RunnerNotActive { .. })
    ));
}

#[test]
fn an_older_database_is_upgraded_in_place_keeps_its_jobs_and_indexes_their_provenance() {
    let dir = TempDir::new("state");
    let path = dir.path().join(DB_NAME);
    let mut db = db_with(&dir, &["r1"]);
    db.submit_job("job-1", &spec(None), Trust::Untrusted, 100)
        .unwrap();
    db.lease("r1", 200).unwrap().unwrap();
    db.record_result("job-1", "r1", &report(), 201).unwrap();
    // What a coordinator from before reported logs left: no logs column, version 1.
    db.conn
        .execute_batch(
            "ALTER TABLE jobs DROP COLUMN logs;
             ALTER TABLE jobs DROP COLUMN cancel_requested_at;
             DROP TABLE inventory;
             UPDATE meta SET value = '1' WHERE key = 'schema_version';",
        )
        .unwrap();
    drop(db);
    let mut db = Db::open(&path).unwrap();
    assert_eq!(db.meta("schema_version").unwrap().as_deref(), Some("6"));
    let job = db.job("job-1", 300).unwrap().unwrap();
    let result = job.result.unwrap();
    assert_eq!(
        result.provenance.as_deref(),
        Some(format!("{}\n", provenance()).as_str())
    );
    // The inventory was filled from what was recorded before it existed.
    assert_eq!(ids(&db, Some(TOOL), None, 10), ["job-1"]);
    assert!(result.logs.is_empty());
    // Results recorded from now on keep their logs.
    db.submit_job("job-2", &spec(None), Trust::Untrusted, 400)
        .unwrap();
    db.lease("r1", 401).unwrap().unwrap();
    db.record_result("job-2", "r1", &report(), 402).unwrap();
    assert_eq!(
        db.job("job-2", 403).unwrap().unwrap().result.unwrap().logs,
        report().logs
    );
    // Version 2 (before cancellation): the column is added, the jobs kept.
    db.conn
        .execute_batch(
            "ALTER TABLE jobs DROP COLUMN cancel_requested_at;
             UPDATE meta SET value = '2' WHERE key = 'schema_version';",
        )
        .unwrap();
    drop(db);
    let mut db = Db::open(&path).unwrap();
    assert_eq!(db.meta("schema_version").unwrap().as_deref(), Some("6"));
    assert_eq!(
        db.job("job-2", 403).unwrap().unwrap().cancel_requested_at,
        None
    );
    // Version 4 (an inventory with keys made another way, never released): made afresh.
    db.conn
        .execute_batch(
            "DELETE FROM inventory WHERE key LIKE 'c:%';
             UPDATE meta SET value = '4' WHERE key = 'schema_version';",
        )
        .unwrap();
    drop(db);
    let db = Db::open(&path).unwrap();
    assert_eq!(db.meta("schema_version").unwrap().as_deref(), Some("6"));
    assert_eq!(ids(&db, None, Some(&COMMIT[..9]), 10), ["job-2", "job-1"]);
    // Version 5 (an inventory without dependencies' uris): made afresh, uris included.
    db.conn
        .execute_batch(
            "DELETE FROM inventory WHERE key LIKE 'u:%';
             UPDATE meta SET value = '5' WHERE key = 'schema_version';",
        )
        .unwrap();
    drop(db);
    let db = Db::open(&path).unwrap();
    assert_eq!(db.meta("schema_version").unwrap().as_deref(), Some("6"));
    let jq = Some(UriPattern::Exact("https://tools.example/jq.tgz"));
    assert_eq!(ids_by_uri(&db, None, None, jq, 10), ["job-2", "job-1"]);
    // A version this build does not know is refused, not guessed at.
    db.conn
        .execute(
            "UPDATE meta SET value = '7' WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
    drop(db);
    let e = Db::open(&path).unwrap_err().to_string();
    assert!(e.contains("schema version Some(\"7\")"), "{e}");
}

#[test]
fn a_queued_job_is_cancelled_at_once_and_a_running_one_is_asked_of_its_runner() {
    let dir = TempDir::new("state");
    let mut db = db_with(&dir, &["r1", "r2"]);
    for id in ["job-1", "job-2", "job-3"] {
        db.submit_job(id, &spec(Some("1m")), Trust::Trusted, 100)
            .unwrap();
    }
    // job-1 is leased; job-2 is cancelled while queued and is never leased.
    db.lease("r1", 100).unwrap().unwrap();
    assert_eq!(db.cancel("job-2", 110).unwrap(), Cancelled::BeforeItRan);
    let job = db.job("job-2", 110).unwrap().unwrap();
    assert_eq!(job.state, JobState::Finished);
    assert_eq!(job.cancel_requested_at, Some(110));
    let result = job.result.unwrap().result;
    assert_eq!(result["status"], "refused");
    assert_eq!(result["reason"], "cancelled by the operator before it ran");
    assert_eq!(db.lease("r2", 111).unwrap().unwrap().job_id, "job-3");
    assert!(db.lease("r2", 112).unwrap().is_none());
    // The running job: marked once, seen by its runner only.
    assert!(!db.cancel_requested("job-1", "r1", 120).unwrap());
    assert_eq!(db.cancel("job-1", 120).unwrap(), Cancelled::Requested);
    assert_eq!(db.cancel("job-1", 130).unwrap(), Cancelled::Requested);
    assert_eq!(
        db.job("job-1", 130).unwrap().unwrap().cancel_requested_at,
        Some(120)
    );
    assert!(db.cancel_requested("job-1", "r1", 130).unwrap());
    // No new credentials for a job being stopped.
    assert!(matches!(
        db.job_for_id_token("job-1", "r1", 130),
        Err(StateError::Cancelled { .. })
    ));
    assert!(matches!(
        db.cancel_requested("job-1", "r2", 130),
        Err(StateError::NotLeasedToRunner { .. })
    ));
    // The runner reports it; then there is nothing to cancel.
    db.record_result("job-1", "r1", &report(), 140).unwrap();
    assert!(matches!(
        db.cancel("job-1", 150),
        Err(StateError::Ended {
            state: "finished",
            ..
        })
    ));
    assert!(matches!(
        db.cancel("job-2", 150),
        Err(StateError::Ended { .. })
    ));
    // A lost job, an unknown one.
    let lease = db
        .job("job-3", 150)
        .unwrap()
        .unwrap()
        .lease_expires_at
        .unwrap();
    assert!(matches!(
        db.cancel("job-3", lease),
        Err(StateError::Ended { state: "lost", .. })
    ));
    assert!(matches!(
        db.cancel("job-9", 150),
        Err(StateError::NoSuchJob { .. })
    ));
}

#[test]
fn jobs_are_listed_newest_first_and_those_that_ended_are_found_for_pruning() {
    let dir = TempDir::new("state");
    let mut db = db_with(&dir, &["r1"]);
    db.submit_job("job-a", &spec(Some("1m")), Trust::Trusted, 100)
        .unwrap();
    db.submit_job("job-b", &spec(Some("1m")), Trust::Untrusted, 110)
        .unwrap();
    db.submit_job("job-c", &spec(None), Trust::Untrusted, 120)
        .unwrap();
    let a = db.lease("r1", 200).unwrap().unwrap();
    assert_eq!(a.job_id, "job-a");
    db.record_result("job-a", "r1", &report(), 210).unwrap();
    let b = db.lease("r1", 220).unwrap().unwrap();
    assert_eq!(b.job_id, "job-b");

    let list = db.list_jobs(10, 230).unwrap();
    let ids: Vec<&str> = list.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["job-c", "job-b", "job-a"]);
    assert_eq!(list[2].status.as_deref(), Some("succeeded"));
    assert_eq!(list[2].finished_at, Some(210));
    assert_eq!(
        (list[1].state, list[1].status.as_deref()),
        (JobState::Leased, None)
    );
    assert_eq!(db.list_jobs(1, 230).unwrap().len(), 1);

    // Finished at 210: ended by 210, not by 209. job-b's lease runs to b.expires_at.
    assert_eq!(db.jobs_ended_before(209).unwrap(), Vec::<String>::new());
    assert_eq!(db.jobs_ended_before(210).unwrap(), ["job-a"]);
    assert_eq!(
        db.jobs_ended_before(b.expires_at).unwrap(),
        ["job-a", "job-b"]
    );
    // A lease that ran out is listed as lost.
    let later = db.list_jobs(10, b.expires_at).unwrap();
    assert_eq!(later[1].state, JobState::Lost);

    // A runner's result whose status is not text (a number, say) does not break the list.
    db.submit_job("job-d", &spec(None), Trust::Untrusted, 130)
        .unwrap();
    let d = db.lease("r1", b.expires_at + 1).unwrap().unwrap();
    assert_eq!(d.job_id, "job-c");
    let odd = ResultReport {
        result: serde_json::json!({"status": 1}),
        ..report()
    };
    db.record_result("job-c", "r1", &odd, b.expires_at + 2)
        .unwrap();
    let list = db.list_jobs(10, b.expires_at + 3).unwrap();
    let c = list.iter().find(|j| j.id == "job-c").unwrap();
    assert_eq!((c.state, c.status.as_deref()), (JobState::Finished, None));

    let mut exported = Vec::new();
    db.each_provenance(|id, text| {
        exported.push((id.to_owned(), text.to_owned()));
        Ok(())
    })
    .unwrap();
    assert_eq!(
        exported,
        [
            ("job-a".to_owned(), format!("{}\n", provenance())),
            ("job-c".to_owned(), format!("{}\n", provenance()))
        ]
    );
}

/// The jobs `inventory_jobs` hands over.
fn ids(db: &Db, digest: Option<&str>, commit: Option<&str>, limit: u32) -> Vec<String> {
    ids_by_uri(db, digest, commit, None, limit)
}

/// [`ids`], with a uri (or prefix) too.
fn ids_by_uri(
    db: &Db,
    digest: Option<&str>,
    commit: Option<&str>,
    uri: Option<UriPattern<'_>>,
    limit: u32,
) -> Vec<String> {
    let mut out = Vec::new();
    db.inventory_jobs(digest, commit, uri, limit, |j| {
        out.push(j.id);
        true
    })
    .unwrap();
    out
}

#[test]
fn a_result_is_indexed_as_it_is_recorded_and_unreadable_provenance_is_counted() {
    let dir = TempDir::new("state");
    let mut db = db_with(&dir, &["r1"]);
    for (job, at) in [("job-1", 100), ("job-2", 110), ("job-3", 115)] {
        db.submit_job(job, &spec(None), Trust::Trusted, at).unwrap();
        db.lease("r1", at + 1).unwrap().unwrap();
    }
    db.record_result("job-1", "r1", &report(), 130).unwrap();
    let mut other = report();
    other.provenance = Some(crate::testutil::provenance_line(
        &"4".repeat(64),
        "fedcba9876543210fedcba9876543210fedcba98",
        TOOL,
        &"3".repeat(64),
    ));
    db.record_result("job-2", "r1", &other, 140).unwrap();
    // Not an in-toto envelope on its second line: the result is recorded all the same, and
    // the job is counted as one no answer covers.
    let mut bad = report();
    bad.provenance = Some(format!("{}\n{{}}\n", provenance()));
    db.record_result("job-3", "r1", &bad, 150).unwrap();
    assert!(db.job("job-3", 151).unwrap().unwrap().result.is_some());
    assert_eq!(db.unindexed_jobs().unwrap(), 1);
    // By a tool both used (newest first), by a commit's prefix, by both, by an artifact.
    assert_eq!(ids(&db, Some(TOOL), None, 10), ["job-2", "job-1"]);
    assert_eq!(ids(&db, None, Some("0123456"), 10), ["job-1"]);
    assert_eq!(ids(&db, Some(TOOL), Some("fedcba9"), 10), ["job-2"]);
    assert_eq!(ids(&db, Some(ART), None, 10), ["job-1"]);
    assert!(ids(&db, Some(ART), Some("fedcba9"), 10).is_empty());
    assert_eq!(ids(&db, Some(TOOL), None, 1), ["job-2"]);
    // A commit prefix is a commit's, not any digest's: the tool's digest does not match it.
    assert!(ids(&db, None, Some(&TOOL[..12]), 10).is_empty());
    // By a dependency's uri, or a prefix of one; with a commit, intersected.
    let tool_uri = Some(UriPattern::Exact("https://tools.example/jq.tgz"));
    assert_eq!(
        ids_by_uri(&db, None, None, tool_uri, 10),
        ["job-2", "job-1"]
    );
    let source = Some(UriPattern::Prefix("git+https://git.example/"));
    assert_eq!(ids_by_uri(&db, None, None, source, 10), ["job-2", "job-1"]);
    assert_eq!(
        ids_by_uri(&db, None, Some("fedcba9"), source, 10),
        ["job-2"]
    );
    assert_eq!(ids_by_uri(&db, Some(TOOL), None, tool_uri, 1), ["job-2"]);
    // Exact means exact; a prefix is of the uri, not of any other key.
    assert!(ids_by_uri(
        &db,
        None,
        None,
        Some(UriPattern::Exact("https://tools.example/jq")),
        10
    )
    .is_empty());
    assert!(ids_by_uri(
        &db,
        None,
        None,
        Some(UriPattern::Prefix("https://other.example/")),
        10
    )
    .is_empty());
    assert!(ids_by_uri(&db, None, None, Some(UriPattern::Prefix(&TOOL[..12])), 10).is_empty());
    // And the whole answer, artifacts and why.
    let q = crate::inventory::Query {
        commit: Some("0123456789".into()),
        ..Default::default()
    }
    .check()
    .unwrap();
    let answer = crate::inventory::query(&db, &q).unwrap();
    assert!(!answer.cut);
    assert_eq!(answer.unindexed, 1);
    assert_eq!(answer.hits.len(), 1);
    assert_eq!(
        (
            answer.hits[0].job_id.as_str(),
            answer.hits[0].trust.as_str(),
            answer.hits[0].artifact.sha256.as_str()
        ),
        ("job-1", "trusted", ART)
    );
}

#[test]
fn the_metrics_snapshot_counts_jobs_by_state_and_a_lease_past_its_end_as_lost() {
    let dir = TempDir::new("state");
    let mut db = db_with(&dir, &["r1", "r2", "r3"]);
    assert_eq!(
        db.metrics_snapshot(50).unwrap(),
        crate::metrics::Snapshot {
            active_runners: ["r1", "r2", "r3"]
                .iter()
                .map(|id| (id.to_string(), format!("host-{id}")))
                .collect(),
            ..Default::default()
        }
    );
    for (id, at) in [
        ("job-1", 100),
        ("job-2", 110),
        ("job-3", 120),
        ("job-4", 130),
    ] {
        db.submit_job(id, &spec(Some("1m")), Trust::Untrusted, at)
            .unwrap();
    }
    let first = db.lease("r1", 200).unwrap().unwrap();
    assert_eq!(first.job_id, "job-1");
    db.lease("r2", 300).unwrap().unwrap();
    db.record_result("job-2", "r2", &report(), 310).unwrap();
    assert!(db.remove_runner("r3", 320).unwrap());
    // job-1's lease (200 + 60 + 600) is over at 860, not yet recorded as lost by a write.
    let s = db.metrics_snapshot(400).unwrap();
    assert_eq!(
        (s.queued, s.leased, s.lost, s.oldest_queued_at),
        (2, 1, 0, Some(120))
    );
    assert_eq!(s.active_runners.len(), 2);
    assert_eq!(s.removed_runners, 1);
    let s = db.metrics_snapshot(first.expires_at).unwrap();
    assert_eq!((s.queued, s.leased, s.lost), (2, 0, 1));
    // Every count reads an index range of one state, never the table.
    for sql in [
        "SELECT COUNT(*) FROM jobs WHERE state = 'queued'",
        "SELECT COUNT(*) FROM jobs WHERE state = 'leased' AND lease_expires_at > 1",
        "SELECT COUNT(*) FROM jobs WHERE state = 'lost'",
        "SELECT COUNT(*) FROM jobs WHERE state = 'leased' AND lease_expires_at <= 1",
        "SELECT MIN(submitted_at) FROM jobs WHERE state = 'queued'",
    ] {
        let plan: Vec<String> = db
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().all(|p| p.contains("USING"))
                && plan.iter().any(|p| p.contains("jobs_by_state")),
            "{sql}: {plan:?}"
        );
    }
}
