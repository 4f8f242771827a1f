use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use super::*;
use crate::tools::testutil::TempDir;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;

const SCOPE: &str = "git:https://git.example/app.git";

fn tree(dir: &Path, files: &[(&str, &str)]) {
    for (path, body) in files {
        let p = dir.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    }
}

fn fresh(base: &Path, name: &str) -> std::path::PathBuf {
    let d = base.join(name);
    fs::create_dir(&d).unwrap();
    d
}

/// Saves `src` as a cache with no bound beyond the defaults, by a job named `build`.
fn save(store: &Store, scope: &str, name: &str, trust: Trust, src: &Path) -> Result<Saved, String> {
    store.save(scope, name, trust, src, Room::default(), "build", "inv-1")
}

fn read(dir: &Path, path: &str) -> Option<String> {
    fs::read_to_string(dir.join(path)).ok()
}

#[test]
fn a_saved_cache_is_restored_whole_with_its_digest_and_symlinks_are_not_followed() {
    let t = TempDir::new("cache-roundtrip");
    let store = Store::new(&t.path().join("state"));
    let job = fresh(t.path(), "job1");
    tree(
        &job,
        &[("registry/index", "crates"), ("bulwark-out/kept", "yes")],
    );
    // A link to a host file is saved as a link; neither copy reads its target.
    symlink("/etc/shadow", job.join("shadow")).unwrap();
    let saved = save(&store, SCOPE, "cargo", Trust::Trusted, &job).unwrap();
    assert_eq!(
        (saved.tier, saved.files, saved.bytes),
        (Tier::Trusted, 2, 9)
    );

    let dst = fresh(t.path(), "job2");
    let restored = store
        .restore(SCOPE, "cargo", Trust::Trusted, &dst, Room::default(), None)
        .unwrap()
        .expect("restored");
    assert_eq!(restored.tier, Tier::Trusted);
    assert_eq!(restored.generation, saved.generation);
    assert_eq!(restored.tree_sha256, saved.tree_sha256);
    assert_eq!(read(&dst, "registry/index").as_deref(), Some("crates"));
    assert_eq!(read(&dst, "bulwark-out/kept").as_deref(), Some("yes"));
    assert_eq!(
        fs::read_link(dst.join("shadow")).unwrap(),
        Path::new("/etc/shadow")
    );
    // Nothing was saved under another name or scope.
    let other = fresh(t.path(), "job3");
    assert_eq!(
        store.restore(SCOPE, "npm", Trust::Trusted, &other, Room::default(), None),
        Ok(None)
    );
    assert_eq!(
        store.restore(
            "git:https://git.example/other.git",
            "cargo",
            Trust::Trusted,
            &other,
            Room::default(),
            None
        ),
        Ok(None)
    );
    assert_eq!(fs::read_dir(&other).unwrap().count(), 0);
}

#[test]
fn untrusted_jobs_read_the_trusted_cache_but_never_write_it() {
    let t = TempDir::new("cache-tiers");
    let store = Store::new(&t.path().join("state"));
    let release = fresh(t.path(), "release");
    tree(&release, &[("dep.rlib", "good")]);
    save(&store, SCOPE, "cargo", Trust::Trusted, &release).unwrap();

    // A pull request's build starts from the trusted cache...
    let pr = fresh(t.path(), "pr");
    let got = store
        .restore(SCOPE, "cargo", Trust::Untrusted, &pr, Room::default(), None)
        .unwrap()
        .unwrap();
    assert_eq!(got.tier, Tier::Trusted);
    assert_eq!(read(&pr, "dep.rlib").as_deref(), Some("good"));
    // ...poisons it, and saves.
    fs::write(pr.join("dep.rlib"), "evil").unwrap();
    let saved = save(&store, SCOPE, "cargo", Trust::Untrusted, &pr).unwrap();
    assert_eq!(saved.tier, Tier::Untrusted);

    // The next release build does not see it; the next pull request's build does.
    let release2 = fresh(t.path(), "release2");
    store
        .restore(
            SCOPE,
            "cargo",
            Trust::Trusted,
            &release2,
            Room::default(),
            None,
        )
        .unwrap();
    assert_eq!(read(&release2, "dep.rlib").as_deref(), Some("good"));
    let pr2 = fresh(t.path(), "pr2");
    let got = store
        .restore(
            SCOPE,
            "cargo",
            Trust::Untrusted,
            &pr2,
            Room::default(),
            None,
        )
        .unwrap()
        .unwrap();
    assert_eq!(got.tier, Tier::Untrusted);
    assert_eq!(read(&pr2, "dep.rlib").as_deref(), Some("evil"));
}

#[test]
fn a_stored_tree_changed_after_its_save_is_refused_naming_it() {
    let t = TempDir::new("cache-tamper");
    let store = Store::new(&t.path().join("state"));
    let job = fresh(t.path(), "job");
    tree(&job, &[("tool/bin/cc", "real compiler")]);
    let saved = save(&store, SCOPE, "cc", Trust::Trusted, &job).unwrap();
    let gen = store
        .tier_dir(SCOPE, "cc", Tier::Trusted)
        .join(&saved.generation);
    fs::write(gen.join("tool/bin/cc"), "backdoored").unwrap();
    let dst = fresh(t.path(), "next");
    let err = store
        .restore(SCOPE, "cc", Trust::Trusted, &dst, Room::default(), None)
        .unwrap_err();
    assert!(
        err.contains("does not match the digest recorded")
            && err.contains(&saved.tree_sha256)
            && err.contains("bulwark caches remove --key"),
        "{err}"
    );
    assert!(!err.contains("--config"), "{err}");
    // Found through a configuration other than the default: the command says so, or it
    // would look in the default state directory and answer that no saved cache matched.
    let store = store.with_config_arg(Some(Path::new("/etc/bulwark/pool-b.toml")));
    let dst = fresh(t.path(), "after");
    let err = store
        .restore(SCOPE, "cc", Trust::Trusted, &dst, Room::default(), None)
        .unwrap_err();
    assert!(
        err.contains("--tier trusted --config /etc/bulwark/pool-b.toml` starts this cache afresh"),
        "{err}"
    );
}

#[test]
fn a_cache_over_its_bound_is_not_saved_and_the_previous_one_stays() {
    let t = TempDir::new("cache-bound");
    let store = Store::new(&t.path().join("state"));
    let small = fresh(t.path(), "small");
    tree(&small, &[("a", "1234")]);
    let first = save(&store, SCOPE, "c", Trust::Trusted, &small).unwrap();
    let big = fresh(t.path(), "big");
    tree(&big, &[("a", "1234"), ("b", "5678")]);
    let bound = Room {
        bytes: Some(6),
        entries: None,
    };
    assert!(store
        .save(SCOPE, "c", Trust::Trusted, &big, bound, "build", "inv-1")
        .is_err());
    let too_many = Room {
        bytes: None,
        entries: Some(1),
    };
    assert!(store
        .save(SCOPE, "c", Trust::Trusted, &big, too_many, "build", "inv-1")
        .is_err());
    let dst = fresh(t.path(), "dst");
    let got = store
        .restore(SCOPE, "c", Trust::Trusted, &dst, Room::default(), None)
        .unwrap()
        .unwrap();
    assert_eq!(got.generation, first.generation);
    assert_eq!(read(&dst, "b"), None);
    // No half-copied generation is left behind.
    let names: Vec<String> = fs::read_dir(store.tier_dir(SCOPE, "c", Tier::Trusted))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("incoming-")),
        "{names:?}"
    );
}

#[test]
fn a_save_removes_older_generations_and_what_a_dead_save_left() {
    let t = TempDir::new("cache-gc");
    let store = Store::new(&t.path().join("state"));
    let job = fresh(t.path(), "job");
    tree(&job, &[("x", "1")]);
    let first = save(&store, SCOPE, "c", Trust::Trusted, &job).unwrap();
    let dir = store.tier_dir(SCOPE, "c", Tier::Trusted);
    fs::create_dir(dir.join("incoming-deadbeef")).unwrap();
    fs::write(job.join("x"), "2").unwrap();
    let second = save(&store, SCOPE, "c", Trust::Trusted, &job).unwrap();
    assert_ne!(first.generation, second.generation);
    assert_ne!(first.tree_sha256, second.tree_sha256);
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want = vec![
        "current".to_string(),
        second.generation.clone(),
        "read.lock".into(),
        "save.lock".into(),
    ];
    want.sort();
    assert_eq!(names, want);
    assert_eq!(
        fs::read_to_string(
            t.path()
                .join("state/caches")
                .join(scope_key(SCOPE))
                .join(".scope")
        )
        .unwrap(),
        format!("{SCOPE}\n")
    );
}

#[test]
fn a_current_record_naming_anything_but_a_generation_is_refused() {
    let t = TempDir::new("cache-current");
    let store = Store::new(&t.path().join("state"));
    let job = fresh(t.path(), "job");
    tree(&job, &[("x", "1")]);
    save(&store, SCOPE, "c", Trust::Trusted, &job).unwrap();
    let dir = store.tier_dir(SCOPE, "c", Tier::Trusted);
    let current = fs::read_to_string(dir.join("current")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&current).unwrap();
    v["generation"] = "../../../../etc".into();
    fs::write(dir.join("current"), v.to_string()).unwrap();
    let dst = fresh(t.path(), "dst");
    let err = store
        .restore(SCOPE, "c", Trust::Trusted, &dst, Room::default(), None)
        .unwrap_err();
    assert!(err.contains("is not a generation's name"), "{err}");
    assert_eq!(fs::read_dir(&dst).unwrap().count(), 0);
}

#[test]
fn a_cache_named_scope_and_another_cache_of_its_source_both_save() {
    let t = TempDir::new("cache-scope-name");
    let store = Store::new(&t.path().join("state"));
    let job = fresh(t.path(), "job");
    tree(&job, &[("x", "1")]);
    for name in ["other", "scope", "more"] {
        save(&store, SCOPE, name, Trust::Trusted, &job).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for name in ["other", "scope", "more"] {
        let dst = fresh(t.path(), &format!("dst-{name}"));
        assert!(store
            .restore(SCOPE, name, Trust::Trusted, &dst, Room::default(), None)
            .unwrap()
            .is_some());
    }
}

#[test]
fn a_tree_as_deep_as_a_copy_descends_is_saved_and_one_level_more_is_not() {
    let t = TempDir::new("cache-deep");
    let store = Store::new(&t.path().join("state"));
    let job = fresh(t.path(), "job");
    let mut p = job.clone();
    for _ in 0..crate::source::MAX_COPY_DEPTH {
        p.push("d");
    }
    fs::create_dir_all(&p).unwrap();
    fs::write(p.join("f"), "bottom").unwrap();
    let saved = save(&store, SCOPE, "c", Trust::Trusted, &job).unwrap();
    let dst = fresh(t.path(), "dst");
    let got = store
        .restore(SCOPE, "c", Trust::Trusted, &dst, Room::default(), None)
        .unwrap()
        .unwrap();
    assert_eq!(got.tree_sha256, saved.tree_sha256);
    fs::create_dir(p.join("d")).unwrap();
    let err = save(&store, SCOPE, "c", Trust::Trusted, &job).unwrap_err();
    assert!(err.contains("directories deep"), "{err}");
    // The message quotes the job's path only in part.
    assert!(err.len() < 1000, "{} bytes", err.len());
    // The earlier generation is still the one restored.
    let dst2 = fresh(t.path(), "dst2");
    let again = store
        .restore(SCOPE, "c", Trust::Trusted, &dst2, Room::default(), None)
        .unwrap()
        .unwrap();
    assert_eq!(again.generation, saved.generation);
}

#[test]
fn a_generation_a_restore_holds_outlives_the_next_save_and_goes_with_the_one_after() {
    let t = TempDir::new("cache-in-use");
    let store = Store::new(&t.path().join("state"));
    let job = fresh(t.path(), "job");
    tree(&job, &[("x", "1")]);
    let first = save(&store, SCOPE, "c", Trust::Trusted, &job).unwrap();
    let dir = store.tier_dir(SCOPE, "c", Tier::Trusted);
    // What a restore holds while it copies.
    let held = Flock::lock(
        File::open(dir.join(&first.generation)).unwrap(),
        FlockArg::LockShared,
    )
    .unwrap();
    let second = save(&store, SCOPE, "c", Trust::Trusted, &job).unwrap();
    assert!(dir.join(&first.generation).is_dir(), "removed while in use");
    drop(held);
    let third = save(&store, SCOPE, "c", Trust::Trusted, &job).unwrap();
    for gone in [&first.generation, &second.generation] {
        assert!(!dir.join(gone).exists(), "{gone} left behind");
    }
    assert!(dir.join(&third.generation).is_dir());
}

#[test]
fn as_root_a_restored_tree_belongs_to_the_owner_given_entry_by_entry() {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: giving files to another uid needs root (the root pass runs it)");
        return;
    }
    let t = TempDir::new("cache-owner");
    let store = Store::new(&t.path().join("state"));
    let job = fresh(t.path(), "job");
    tree(&job, &[("a/b/c", "1"), ("top", "2")]);
    symlink("/etc/passwd", job.join("a/link")).unwrap();
    save(&store, SCOPE, "c", Trust::Trusted, &job).unwrap();
    let dst = fresh(t.path(), "dst");
    let owner = (4_000_321, 4_000_321);
    store
        .restore(
            SCOPE,
            "c",
            Trust::Trusted,
            &dst,
            Room::default(),
            Some(owner),
        )
        .unwrap()
        .unwrap();
    let mut seen = 0;
    let mut stack = vec![dst.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = fs::symlink_metadata(e.path()).unwrap();
            assert_eq!((meta.uid(), meta.gid()), owner, "{}", e.path().display());
            seen += 1;
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
    assert_eq!(seen, 5, "a, a/b, a/b/c, a/link, top");
    assert_eq!(
        fs::metadata("/etc/passwd").unwrap().uid(),
        0,
        "the link was not followed"
    );
}

fn removed(done: Vec<Removal>) -> Vec<(String, Tier)> {
    done.into_iter()
        .map(|r| {
            assert_eq!(r.result, Ok(()), "{} {:?}", r.name, r.tier);
            (r.name, r.tier)
        })
        .collect()
}

#[test]
fn list_names_every_saved_cache_and_remove_takes_only_what_it_is_asked() {
    let t = TempDir::new("cache-list");
    let store = Store::new(&t.path().join("state"));
    assert_eq!(store.list(), Ok(Vec::new()));
    let job = fresh(t.path(), "job");
    tree(&job, &[("x", "12345")]);
    let other = "local:file:///src/other";
    // Saved by a named run, which the listing reports.
    let a = store
        .save(
            SCOPE,
            "cargo",
            Trust::Trusted,
            &job,
            Room::default(),
            "release",
            "inv-7",
        )
        .unwrap();
    save(&store, SCOPE, "cargo", Trust::Untrusted, &job).unwrap();
    save(&store, SCOPE, "npm", Trust::Trusted, &job).unwrap();
    save(&store, other, "cargo", Trust::Trusted, &job).unwrap();
    let listed = store.list().unwrap();
    let keys: Vec<(&str, &str, &str)> = listed
        .iter()
        .map(|l| (l.scope.as_str(), l.name.as_str(), l.tier))
        .collect();
    assert_eq!(
        keys,
        [
            (SCOPE, "cargo", "trusted"),
            (SCOPE, "cargo", "untrusted"),
            (SCOPE, "npm", "trusted"),
            (other, "cargo", "trusted"),
        ]
    );
    let first = &listed[0];
    assert_eq!(first.key, scope_key(SCOPE));
    assert_eq!(first.generation.as_deref(), Some(a.generation.as_str()));
    assert_eq!(first.tree_sha256.as_deref(), Some(a.tree_sha256.as_str()));
    assert_eq!((first.files, first.bytes), (Some(1), Some(5)));
    assert_eq!(first.job.as_deref(), Some("release"));
    assert_eq!(first.invocation.as_deref(), Some("inv-7"));
    assert_eq!(first.generations, 1);

    let key = scope_key(SCOPE);
    // One tier of one cache: an untrusted job then falls back to the trusted tier.
    assert_eq!(
        removed(
            store
                .remove(&key, Some("cargo"), Some(Tier::Untrusted))
                .unwrap()
        ),
        [("cargo".to_string(), Tier::Untrusted)]
    );
    let dst = fresh(t.path(), "dst");
    let got = store
        .restore(
            SCOPE,
            "cargo",
            Trust::Untrusted,
            &dst,
            Room::default(),
            None,
        )
        .unwrap()
        .unwrap();
    assert_eq!(got.tier, Tier::Trusted);
    // Then everything left of the scope; the other scope stays, and nothing of the removed
    // ones is listed or restored.
    assert_eq!(
        removed(store.remove(&key, None, None).unwrap()),
        [
            ("cargo".to_string(), Tier::Trusted),
            ("npm".to_string(), Tier::Trusted)
        ]
    );
    let scopes: Vec<String> = store.list().unwrap().into_iter().map(|l| l.scope).collect();
    assert_eq!(scopes, [other]);
    assert!(store.remove(&key, None, None).unwrap().is_empty());
    let dst = fresh(t.path(), "dst2");
    assert_eq!(
        store.restore(
            SCOPE,
            "cargo",
            Trust::Untrusted,
            &dst,
            Room::default(),
            None
        ),
        Ok(None)
    );
    // A removed cache saves again as usual.
    save(&store, SCOPE, "cargo", Trust::Trusted, &job).unwrap();
    assert!(store
        .restore(SCOPE, "cargo", Trust::Trusted, &dst, Room::default(), None)
        .unwrap()
        .is_some());
    // Keys and names are checked, not joined blindly.
    assert!(store.remove("../../etc", None, None).is_err());
    assert!(store.remove(&key, Some("../x"), None).is_err());
    assert!(store.remove(&key, Some(""), None).is_err());
}

#[test]
fn remove_waits_for_a_restore_copying_from_the_cache() {
    let t = TempDir::new("cache-remove-wait");
    let store = Store::new(&t.path().join("state"));
    let job = fresh(t.path(), "job");
    tree(&job, &[("x", "1")]);
    let saved = save(&store, SCOPE, "c", Trust::Trusted, &job).unwrap();
    let gen = store
        .tier_dir(SCOPE, "c", Tier::Trusted)
        .join(&saved.generation);
    // What a restore holds while it copies.
    let held = Flock::lock(File::open(&gen).unwrap(), FlockArg::LockShared).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let remover = store.clone();
    let key = scope_key(SCOPE);
    let thread = std::thread::spawn(move || {
        let r = remover.remove(&key, None, None);
        let _ = tx.send(());
        r
    });
    assert!(
        rx.recv_timeout(std::time::Duration::from_millis(300))
            .is_err(),
        "removed while a restore held it"
    );
    assert!(gen.join("x").exists());
    drop(held);
    assert_eq!(
        removed(thread.join().unwrap().unwrap()),
        [("c".to_string(), Tier::Trusted)]
    );
    assert!(!gen.exists());
}

/// The unit of the eviction tests' cache sizes: large beside [`ENTRY_CHARGE`].
const U: usize = 10_000;

/// A store holding at most 100 units and three entries' charge (three one-file caches of 100
/// units together), forgetting what was unused for a day.
fn small_store(t: &TempDir) -> Store {
    Store::new(&t.path().join("state")).with_bounds(Bounds {
        max_total: (100 * U) as u64 + 3 * ENTRY_CHARGE,
        max_total_entries: 1000,
        max_unused: std::time::Duration::from_secs(86_400),
    })
}

/// Saves a cache of one file of `units` × [`U`] bytes of `scope` as `c`, by a job of
/// `trust`, last used `ago_secs` seconds ago.
fn save_sized(
    t: &TempDir,
    store: &Store,
    scope: &str,
    trust: Trust,
    units: usize,
    ago_secs: u64,
) -> Result<Saved, String> {
    let job = t
        .path()
        .join(format!("job-{}", crate::fsutil::random_hex(4)));
    fs::create_dir(&job).unwrap();
    fs::write(job.join("blob"), "x".repeat(units * U)).unwrap();
    let saved = save(store, scope, "c", trust, &job)?;
    age(store, scope, Tier::written_by(trust), ago_secs);
    Ok(saved)
}

/// Makes the cache `c` of `scope` in `tier` last used `ago_secs` seconds ago.
fn age(store: &Store, scope: &str, tier: Tier, ago_secs: u64) {
    let current = store.tier_dir(scope, "c", tier).join("current");
    File::open(current)
        .unwrap()
        .set_modified(SystemTime::now() - std::time::Duration::from_secs(ago_secs))
        .unwrap();
}

/// Whether the cache `c` of `scope` holds a saved generation in `tier`.
fn holds(store: &Store, scope: &str, tier: Tier) -> bool {
    read_current(&store.tier_dir(scope, "c", tier))
        .unwrap()
        .is_some_and(|c| {
            store
                .tier_dir(scope, "c", tier)
                .join(c.generation)
                .join("blob")
                .exists()
        })
}

/// What a restore holds while it copies from the current generation of `c` in `tier`.
fn hold(store: &Store, scope: &str, tier: Tier) -> Flock<File> {
    let dir = store.tier_dir(scope, "c", tier);
    let gen = dir.join(read_current(&dir).unwrap().unwrap().generation);
    Flock::lock(File::open(gen).unwrap(), FlockArg::LockShared).unwrap()
}

#[test]
fn an_untrusted_save_pushes_out_the_least_recently_used_untrusted_cache_never_a_trusted_one() {
    let t = TempDir::new("cache-evict-untrusted");
    let store = small_store(&t);
    save_sized(&t, &store, "local:a", Trust::Trusted, 40, 300).unwrap();
    save_sized(&t, &store, "local:b", Trust::Untrusted, 30, 200).unwrap();
    save_sized(&t, &store, "local:c", Trust::Untrusted, 30, 100).unwrap();
    // 40 + 30 + 30 + 30 > 100: the oldest untrusted one (b) goes; a is older but trusted.
    let saved = save_sized(&t, &store, "local:d", Trust::Untrusted, 30, 0).unwrap();
    assert_eq!(saved.removed, 1);
    assert!(!holds(&store, "local:b", Tier::Untrusted));
    assert!(holds(&store, "local:a", Tier::Trusted));
    assert!(holds(&store, "local:c", Tier::Untrusted));
    assert!(holds(&store, "local:d", Tier::Untrusted));
    // 70 more fits only by removing the trusted cache: not saved, and nothing removed for it.
    let e = save_sized(&t, &store, "local:e", Trust::Untrusted, 70, 0).unwrap_err();
    assert!(
        e.contains("the build cache store is full")
            && e.contains("no room could be made from less recently used untrusted caches"),
        "{e}"
    );
    // Nothing about the store's contents reaches the job.
    assert!(!e.contains("busy") && !e.contains("in use"), "{e}");
    for (scope, tier) in [
        ("local:a", Tier::Trusted),
        ("local:c", Tier::Untrusted),
        ("local:d", Tier::Untrusted),
    ] {
        assert!(holds(&store, scope, tier), "{scope} was removed");
    }
    assert!(!holds(&store, "local:e", Tier::Untrusted));
    let key_e = store.root().join(scope_key("local:e")).join("c/untrusted");
    assert!(
        subdirs(&key_e).unwrap().is_empty(),
        "the refused save left its tree"
    );
}

#[test]
fn a_trusted_save_removes_trusted_caches_only_while_the_trusted_ones_alone_are_over() {
    let t = TempDir::new("cache-evict-trusted");
    let store = small_store(&t);
    save_sized(&t, &store, "local:a", Trust::Trusted, 50, 300).unwrap();
    save_sized(&t, &store, "local:b", Trust::Untrusted, 40, 10).unwrap();
    // 50 + 40 + 40 > 100: b goes although a was used longer ago.
    let saved = save_sized(&t, &store, "local:c", Trust::Trusted, 40, 0).unwrap();
    assert_eq!(saved.removed, 1);
    assert!(!holds(&store, "local:b", Tier::Untrusted));
    assert!(holds(&store, "local:a", Tier::Trusted));
    // 50 + 40 + 40 trusted > 100: the least recently used trusted one goes.
    save_sized(&t, &store, "local:d", Trust::Trusted, 40, 0).unwrap();
    assert!(!holds(&store, "local:a", Tier::Trusted));
    assert!(holds(&store, "local:c", Tier::Trusted));
    assert!(holds(&store, "local:d", Tier::Trusted));
}

#[test]
fn untrusted_caches_in_use_never_push_out_a_trusted_one() {
    let t = TempDir::new("cache-evict-busy-untrusted");
    let store = small_store(&t);
    save_sized(&t, &store, "local:release", Trust::Trusted, 40, 300).unwrap();
    save_sized(&t, &store, "local:pr", Trust::Untrusted, 50, 10).unwrap();
    // The pull request's cache is being copied into a job: it cannot go now.
    let held = hold(&store, "local:pr", Tier::Untrusted);
    // 40 + 50 + 40 > 100, but the trusted caches alone (80) fit: saved, the release's older
    // cache kept, the store over its bound until the pull request's cache can go.
    let saved = save_sized(&t, &store, "local:release2", Trust::Trusted, 40, 0).unwrap();
    assert_eq!(saved.removed, 0);
    assert!(holds(&store, "local:release", Tier::Trusted));
    assert!(holds(&store, "local:pr", Tier::Untrusted));
    // Nor does a prune while it is still in use.
    let pruned = store.prune(false).unwrap();
    assert!(pruned.removed.is_empty(), "{pruned:?}");
    assert_eq!(pruned.busy.len(), 1);
    drop(held);
    let pruned = store.prune(false).unwrap();
    assert_eq!(pruned.removed.len(), 1, "{pruned:?}");
    assert_eq!(pruned.removed[0].0.tier, Tier::Untrusted);
    assert!(!holds(&store, "local:pr", Tier::Untrusted));
    assert!(holds(&store, "local:release", Tier::Trusted));
}

#[test]
fn a_cache_of_empty_entries_is_weighed_by_its_entries() {
    let t = TempDir::new("cache-evict-entries");
    let store = small_store(&t);
    // No file contents at all, but 300 directories: 300 entry charges, over the bound.
    let job = fresh(t.path(), "many");
    for i in 0..300 {
        fs::create_dir(job.join(format!("d{i}"))).unwrap();
    }
    let e = save(&store, "local:empty", "c", Trust::Untrusted, &job).unwrap_err();
    assert!(e.contains("the build cache store is full"), "{e}");
    // And the entry bound alone: 1000 entries at most, 1200 empty files weigh little here.
    let roomy = Store::new(&t.path().join("state")).with_bounds(Bounds {
        max_total: u64::MAX,
        max_total_entries: 1000,
        max_unused: std::time::Duration::from_secs(86_400),
    });
    let job = fresh(t.path(), "files");
    for i in 0..1200 {
        fs::write(job.join(format!("f{i}")), "").unwrap();
    }
    let e = save(&roomy, "local:files", "c", Trust::Trusted, &job).unwrap_err();
    assert!(e.contains("caches.max_total_entries (1000)"), "{e}");
}

#[test]
fn a_cache_unused_too_long_goes_with_any_save_unless_a_job_holds_it() {
    let t = TempDir::new("cache-evict-unused");
    let store = small_store(&t);
    save_sized(&t, &store, "local:old", Trust::Trusted, 10, 0).unwrap();
    save_sized(&t, &store, "local:held", Trust::Untrusted, 10, 0).unwrap();
    save_sized(&t, &store, "local:recent", Trust::Trusted, 10, 3600).unwrap();
    age(&store, "local:old", Tier::Trusted, 2 * 86_400);
    age(&store, "local:held", Tier::Untrusted, 2 * 86_400);
    let lock = hold(&store, "local:held", Tier::Untrusted);
    // Time, not trust, decides this: an untrusted job's save removes the unused trusted one.
    let saved = save_sized(&t, &store, "local:new", Trust::Untrusted, 10, 0).unwrap();
    assert_eq!(saved.removed, 1);
    assert!(!holds(&store, "local:old", Tier::Trusted));
    assert!(holds(&store, "local:held", Tier::Untrusted));
    assert!(holds(&store, "local:recent", Tier::Trusted));
    // Under a tighter bound, listed once as busy, though both unused and in the way: the
    // room is made from what is not in use.
    let tight = Store::new(&t.path().join("state")).with_bounds(Bounds {
        max_total: (25 * U) as u64 + 3 * ENTRY_CHARGE,
        max_total_entries: 1000,
        max_unused: std::time::Duration::from_secs(86_400),
    });
    let dry = tight.prune(true).unwrap();
    assert_eq!(dry.busy.len(), 1, "{dry:?}");
    assert_eq!(dry.removed.len(), 1, "{dry:?}");
    assert_eq!(
        (dry.removed[0].0.key.as_str(), dry.removed[0].1),
        (scope_key("local:new").as_str(), Why::Room)
    );
    // Once let go, the next weighing takes it.
    drop(lock);
    let pruned = store.prune(false).unwrap();
    assert_eq!(pruned.removed.len(), 1);
    assert_eq!(pruned.removed[0].1, Why::Unused);
    assert!(!holds(&store, "local:held", Tier::Untrusted));
    assert_eq!(
        (pruned.total, pruned.total_entries),
        (weight(2 * U as u64 * 10, 2), 2)
    );
}

#[test]
fn a_generation_left_for_a_restore_goes_when_it_is_let_go() {
    let t = TempDir::new("cache-evict-leftover");
    let store = small_store(&t);
    save_sized(&t, &store, SCOPE, Trust::Trusted, 10, 0).unwrap();
    let dir = store.tier_dir(SCOPE, "c", Tier::Trusted);
    let held = hold(&store, SCOPE, Tier::Trusted);
    save_sized(&t, &store, SCOPE, Trust::Trusted, 20, 0).unwrap();
    let generations = || subdirs(&dir).unwrap().len();
    assert_eq!(generations(), 2, "the held generation was removed");
    drop(held);
    // A save of the cache in progress right now (holding `save.lock`, writing its tree, which
    // it holds locked until `current` names it) does not stop the next restore of the cache
    // from removing what nobody holds, and keeps its own tree.
    let saving = lock(&dir.join("save.lock"), FlockArg::LockExclusive).unwrap();
    fs::create_dir_all(dir.join("incoming-live/sub")).unwrap();
    let building = Flock::lock(
        File::open(dir.join("incoming-live")).unwrap(),
        FlockArg::LockExclusive,
    )
    .unwrap();
    let dst = fresh(t.path(), "dst");
    store
        .restore(SCOPE, "c", Trust::Trusted, &dst, Room::default(), None)
        .unwrap()
        .expect("restored");
    assert_eq!(generations(), 2, "one generation and the save's tree");
    assert!(dir.join("incoming-live/sub").exists());
    // What a save that died left goes with a weighing.
    drop((saving, building));
    store.prune(false).unwrap();
    assert_eq!(generations(), 1);
    assert!(!dir.join("incoming-live").exists());
}

#[test]
fn a_trusted_save_makes_room_however_many_small_caches_it_takes() {
    let t = TempDir::new("cache-evict-many");
    let one = weight(1, 1);
    let store = Store::new(&t.path().join("state")).with_bounds(Bounds {
        max_total: 150 * one + 100,
        max_total_entries: 10_000,
        max_unused: std::time::Duration::from_secs(86_400),
    });
    for i in 0..150 {
        let job = fresh(t.path(), &format!("pr-{i}"));
        fs::write(job.join("blob"), "x").unwrap();
        save(
            &store,
            &format!("local:pr-{i}"),
            "c",
            Trust::Untrusted,
            &job,
        )
        .unwrap();
    }
    // 131 one-byte caches must go for it.
    let job = fresh(t.path(), "release");
    fs::write(job.join("blob"), "x".repeat(130 * one as usize)).unwrap();
    let saved = save(&store, "local:release", "c", Trust::Trusted, &job).unwrap();
    assert_eq!(saved.removed, 131);
    let listed = store.list().unwrap();
    let total: u64 = listed.iter().map(|c| weight(c.bytes.unwrap(), 1)).sum();
    assert!(total <= 150 * one + 100, "{total}");
    assert_eq!(listed.len(), 20);
    // Nothing is left in the trash.
    assert_eq!(
        fs::read_dir(store.root().join(".trash")).unwrap().count(),
        0
    );
}

#[test]
fn what_a_dead_process_left_in_the_trash_goes_with_the_next_save_and_a_tree_being_deleted_stays() {
    let t = TempDir::new("cache-trash");
    let store = small_store(&t);
    save_sized(&t, &store, SCOPE, Trust::Trusted, 1, 0).unwrap();
    let trash = store.root().join(".trash");
    fs::create_dir_all(trash.join("dead/deep/er")).unwrap();
    fs::write(trash.join("dead/deep/er/f"), "x").unwrap();
    // Another process deleting this one right now holds it locked.
    fs::create_dir_all(trash.join("live/sub")).unwrap();
    let live = Flock::lock(
        File::open(trash.join("live")).unwrap(),
        FlockArg::LockExclusive,
    )
    .unwrap();
    save_sized(&t, &store, "local:other", Trust::Untrusted, 1, 0).unwrap();
    assert!(!trash.join("dead").exists());
    assert!(trash.join("live/sub").exists());
    drop(live);
    assert!(store.prune(false).unwrap().failed.is_empty());
    assert!(!trash.join("live").exists());
}

#[test]
fn a_restore_marks_the_cache_used() {
    let t = TempDir::new("cache-used");
    let store = small_store(&t);
    save_sized(&t, &store, SCOPE, Trust::Trusted, 10, 2 * 86_400).unwrap();
    let current = store.tier_dir(SCOPE, "c", Tier::Trusted).join("current");
    let before = fs::metadata(&current).unwrap().modified().unwrap();
    let dst = fresh(t.path(), "dst");
    store
        .restore(SCOPE, "c", Trust::Untrusted, &dst, Room::default(), None)
        .unwrap()
        .expect("restored");
    let after = fs::metadata(&current).unwrap().modified().unwrap();
    assert!(after > before + std::time::Duration::from_secs(86_400));
    // So the weighing keeps it.
    assert!(store.prune(false).unwrap().removed.is_empty());
    assert!(holds(&store, SCOPE, Tier::Trusted));
}

#[test]
fn prune_removes_what_it_can_past_caches_in_use_and_a_dry_run_removes_nothing() {
    let t = TempDir::new("cache-prune");
    let big = Store::new(&t.path().join("state"));
    save_sized(&t, &big, "local:a", Trust::Trusted, 60, 300).unwrap();
    save_sized(&t, &big, "local:b", Trust::Trusted, 60, 200).unwrap();
    save_sized(&t, &big, "local:c", Trust::Untrusted, 10, 100).unwrap();
    save_sized(&t, &big, "local:d", Trust::Untrusted, 50, 50).unwrap();
    // The bound lowered afterwards (a new configuration): 180 units over 100.
    let store = small_store(&t);
    // a (the oldest trusted) and d are in use: prune removes what it can, past them, though
    // that does not bring the store within its bound.
    let held = (
        hold(&store, "local:a", Tier::Trusted),
        hold(&store, "local:d", Tier::Untrusted),
    );
    let dry = store.prune(true).unwrap();
    let names = |p: &Pruned| -> Vec<(String, Why)> {
        p.removed
            .iter()
            .map(|(w, why)| (w.key.clone(), *why))
            .collect()
    };
    let key = |s: &str| scope_key(s);
    // The least recently used free trusted one while the trusted ones alone are over (b),
    // then the free untrusted ones while the whole store is (c).
    assert_eq!(
        names(&dry),
        [(key("local:b"), Why::Room), (key("local:c"), Why::Room)]
    );
    assert_eq!(dry.busy.len(), 2);
    assert_eq!(dry.total, weight(110 * U as u64, 2));
    assert!(holds(&store, "local:b", Tier::Trusted));
    assert!(holds(&store, "local:c", Tier::Untrusted));
    let done = store.prune(false).unwrap();
    assert_eq!(names(&done), names(&dry));
    assert!(done.failed.is_empty());
    assert!(!holds(&store, "local:b", Tier::Trusted));
    assert!(!holds(&store, "local:c", Tier::Untrusted));
    assert!(holds(&store, "local:a", Tier::Trusted));
    assert!(holds(&store, "local:d", Tier::Untrusted));
    // Let go: the trusted one alone fits, the untrusted one goes.
    drop(held);
    assert_eq!(
        names(&store.prune(false).unwrap()),
        [(key("local:d"), Why::Room)]
    );
    assert_eq!(store.list().unwrap().len(), 1);
}

/// A credential value as a job was given it: a slash and a quote, so that its JSON-escaped
/// and percent-encoded forms differ from it.
const TOKEN: &str = r#"hvs.CAESIJ/bulwark"test-token-0123456789"#;

fn finder() -> crate::creds::mask::Finder {
    crate::creds::mask::Finder::new([("aws-release", "AKIAIOSFODNN7EXAMPLE"), ("vault", TOKEN)])
}

/// Saves `src` as the trusted cache `name` of a job given [`finder`]'s credentials.
fn save_trusted(store: &Store, name: &str, src: &Path) -> Result<Saved, String> {
    store.save_refusing(
        SCOPE,
        name,
        Trust::Trusted,
        src,
        Room::default(),
        "build",
        "inv",
        Some(&finder()),
    )
}

/// Nothing of a refused save is in the tier: no `current`, no generation, no `incoming-*`.
fn tier_is_empty(store: &Store, scope: &str, name: &str, tier: Tier) -> bool {
    let dir = store.tier_dir(scope, name, tier);
    let left: Vec<String> = fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default();
    left.is_empty()
}

/// A trusted job's cache is restored by pull requests: a tree holding a value of a credential
/// the job was given, in any form the log would mask, in a file, a link target or a name,
/// is not saved; the refusal names the credential and where, never the value.
#[test]
fn a_cache_holding_a_credential_value_is_not_saved_and_the_reason_names_it_not_the_value() {
    use base64::Engine as _;
    let t = TempDir::new("cache-creds");
    let store = Store::new(&t.path().join("state"));
    let json = TOKEN.replace('"', "\\\"").replace('/', "\\/");
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("token:{TOKEN}"));
    // Split across the copy's 256 KiB reads.
    let split = format!("{}{TOKEN}", "x".repeat(256 * 1024 - 10));
    let cases = [
        ("as-issued", "home/.vault-token", TOKEN.to_string()),
        ("json", "cfg.json", format!("{{\"token\":\"{json}\"}}")),
        (
            "base64",
            "docker/config.json",
            format!("{{\"auth\":\"{b64}\"}}"),
        ),
        ("split", "big", split),
    ];
    for (case, path, contents) in cases {
        let job = fresh(t.path(), case);
        tree(&job, &[("ok", "nothing secret"), (path, &contents)]);
        let err = save_trusted(&store, case, &job).unwrap_err();
        assert!(
            err.contains(&format!(
                "/cache/{case}/{path}: holds a value of the job's credential \"vault\""
            )),
            "{case}: {err}"
        );
        assert!(
            !err.contains("CAESIJ") && !err.contains(&b64[8..20]),
            "{case}: {err}"
        );
        assert!(tier_is_empty(&store, SCOPE, case, Tier::Trusted), "{case}");
        let dst = fresh(t.path(), &format!("{case}-pr"));
        assert_eq!(
            store
                .restore(SCOPE, case, Trust::Untrusted, &dst, Room::default(), None)
                .unwrap(),
            None,
            "{case}"
        );
    }
    // In a link's target, and in a path (named by its directory, never by the name).
    let job = fresh(t.path(), "link");
    symlink(format!("/x/{TOKEN}"), job.join("l")).unwrap();
    let err = save_trusted(&store, "link", &job).unwrap_err();
    assert!(err.contains("/cache/link/l: holds a value"), "{err}");
    let job = fresh(t.path(), "name");
    fs::create_dir_all(job.join("sub").join("AKIAIOSFODNN7EXAMPLE")).unwrap();
    let err = save_trusted(&store, "name", &job).unwrap_err();
    assert!(
        err.contains("/cache/name/sub: has an entry whose path holds a value of the job's credential \"aws-release\""),
        "{err}"
    );
    assert!(!err.contains("AKIA"), "{err}");
    // A value holding `/` made into a path: its first part a directory name too short to
    // match alone, the match found on the file below it. Nothing of it is named.
    let job = fresh(t.path(), "slashed");
    let (dir, file) = TOKEN.split_once('/').unwrap();
    fs::create_dir_all(job.join("sub2").join(dir)).unwrap();
    fs::write(job.join("sub2").join(dir).join(file), "x").unwrap();
    let err = save_trusted(&store, "slashed", &job).unwrap_err();
    assert!(
        err.contains("/cache/slashed/sub2: has an entry whose path holds"),
        "{err}"
    );
    assert!(!err.contains(dir), "part of the value named: {err}");

    // What holds none of them is saved as before, and reaches a pull request.
    let job = fresh(t.path(), "clean");
    tree(
        &job,
        &[
            ("home/.npmrc", "registry=https://registry.example/"),
            ("big", &"y".repeat(300_000)),
        ],
    );
    let saved = save_trusted(&store, "clean", &job).unwrap();
    assert_eq!(saved.files, 2);
    let dst = fresh(t.path(), "clean-pr");
    let restored = store
        .restore(
            SCOPE,
            "clean",
            Trust::Untrusted,
            &dst,
            Room::default(),
            None,
        )
        .unwrap()
        .expect("restored");
    assert_eq!(restored.tree_sha256, saved.tree_sha256);
}

/// Answers as a filesystem with 20 MiB available of which `limits.min_free_disk` keeps 4.
fn sixteen_mib_free(
    _: &Path,
    _: bulwark_protocol::DiskReserve,
) -> Result<crate::disk_reserve::Space, crate::disk_reserve::CheckError> {
    Ok(crate::disk_reserve::Space {
        available: 20 << 20,
        need: 4 << 20,
        inodes: None,
    })
}

fn reserving_store(state: &Path) -> Store {
    let store = Store::new(state).with_disk_reserve(bulwark_protocol::DiskReserve::Bytes(4 << 20));
    Store {
        measure: sixteen_mib_free,
        ..store
    }
}

const TEN_MIB: Room = Room {
    bytes: Some(10 << 20),
    entries: None,
};

/// Saves running at once hold what they may write: together never more than the room above
/// the reserve; what one holds is given back when it ends.
#[test]
fn saves_in_progress_together_never_hold_more_than_the_room_above_the_reserve() {
    let t = TempDir::new("cache-reserve");
    let store = reserving_store(&t.path().join("state"));
    fs::create_dir_all(store.root()).unwrap();
    let measure = store.measure;
    let a = reserve::reserve(store.root(), TEN_MIB, store.disk, measure).unwrap();
    assert_eq!(a.room.bytes, Some(10 << 20));
    let b = reserve::reserve(store.root(), TEN_MIB, store.disk, measure).unwrap();
    assert_eq!((b.room.bytes, b.others), (Some(6 << 20), 10 << 20));
    let c = reserve::reserve(store.root(), TEN_MIB, store.disk, measure).unwrap();
    assert_eq!(c.room.bytes, Some(0));
    assert!(a.room.bytes.unwrap() + b.room.bytes.unwrap() + c.room.bytes.unwrap() <= 16 << 20);
    drop((b, c));
    let d = reserve::reserve(store.root(), TEN_MIB, store.disk, measure).unwrap();
    assert_eq!(d.room.bytes, Some(6 << 20));
    drop((a, d));
    assert_eq!(
        fs::read_dir(store.root().join(reserve::RESERVATIONS))
            .unwrap()
            .count(),
        0,
        "every save gave its room back"
    );
    // With the reserve off there is nothing to keep, and nothing is held.
    let off = reserve::reserve(
        store.root(),
        TEN_MIB,
        bulwark_protocol::DiskReserve::Off,
        measure,
    )
    .unwrap();
    assert_eq!(off.room, TEN_MIB);
    assert!(off._held.is_none());
}

const RESERVE_CHILD: &str = "cache::tests::child_holds_room_for_a_save";
const RESERVE_CHILD_ENV: &str = "BULWARK_TEST_RESERVE_CHILD";

/// The child half of the test below: another process's save in progress.
#[test]
fn child_holds_room_for_a_save() {
    let Some(state) = std::env::var_os(RESERVE_CHILD_ENV) else {
        eprintln!("helper of a_save_beside_another_processs_save_gets_only_what_is_left_and_a_dead_ones_room_comes_back: nothing to do");
        return;
    };
    let store = reserving_store(Path::new(&state));
    fs::create_dir_all(store.root()).unwrap();
    let _held = reserve::reserve(store.root(), TEN_MIB, store.disk, store.measure).unwrap();
    println!("held");
    // Until it is killed.
    std::thread::sleep(std::time::Duration::from_secs(300));
}

/// Saves come from separate `bulwark run` processes: one's room is held against another's,
/// and a process that died while it saved holds nothing.
#[test]
fn a_save_beside_another_processs_save_gets_only_what_is_left_and_a_dead_ones_room_comes_back() {
    use std::io::BufRead;
    let t = TempDir::new("cache-reserve-x");
    let state = t.path().join("state");
    let store = reserving_store(&state);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([RESERVE_CHILD, "--exact", "--nocapture", "--test-threads=1"])
        .env(RESERVE_CHILD_ENV, &state)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("held"))),
        "the child held no room"
    );
    // 8 MiB fits alone (10 MiB of room, 16 above the reserve), not beside the other's 10.
    let job = fresh(t.path(), "job");
    tree(
        &job,
        &[("a", &"a".repeat(4 << 20)), ("b", &"b".repeat(4 << 20))],
    );
    let err = store
        .save(SCOPE, "deps", Trust::Trusted, &job, TEN_MIB, "build", "inv")
        .unwrap_err();
    assert!(
        err.contains("holds more than a saved cache may: at most 6291456 bytes")
            && err.contains("less the 10485760 bytes other cache saves in progress held"),
        "{err}"
    );
    assert!(tier_is_empty(&store, SCOPE, "deps", Tier::Trusted));
    child.kill().unwrap();
    child.wait().unwrap();
    let saved = store
        .save(SCOPE, "deps", Trust::Trusted, &job, TEN_MIB, "build", "inv")
        .unwrap();
    assert_eq!(saved.bytes, 8 << 20);
    assert_eq!(
        fs::read_dir(store.root().join(reserve::RESERVATIONS))
            .unwrap()
            .count(),
        0,
        "the dead process's reservation was removed"
    );
}

/// A save's room is what it takes on disk: each entry a block whatever its size, as the store
/// weighs a cache. 5000 one-byte files are 5 kB of contents but about 20 MiB of blocks: over
/// the 10 MiB a save may hold here, where counting contents alone let it through.
#[test]
fn each_entry_takes_a_block_of_the_room_a_save_holds() {
    let t = TempDir::new("cache-blocks");
    let store = reserving_store(&t.path().join("state"));
    fs::create_dir_all(store.root()).unwrap();
    let many = fresh(t.path(), "many");
    for i in 0..5000 {
        fs::write(many.join(format!("f{i}")), "x").unwrap();
    }
    let err = store
        .save(
            SCOPE,
            "many",
            Trust::Trusted,
            &many,
            TEN_MIB,
            "build",
            "inv",
        )
        .unwrap_err();
    assert!(err.contains("bytes per entry"), "{err}");
    assert!(tier_is_empty(&store, SCOPE, "many", Tier::Trusted));
    // A thousand of them (about 4 MiB of blocks) fit.
    let few = fresh(t.path(), "few");
    for i in 0..1000 {
        fs::write(few.join(format!("f{i}")), "x").unwrap();
    }
    store
        .save(SCOPE, "few", Trust::Trusted, &few, TEN_MIB, "build", "inv")
        .unwrap();
}

/// A reservation that cannot be judged (here: held, but not `<bytes> <entries>`) refuses the
/// save naming the file and what to do, not with a count no later save could fit.
#[test]
fn a_reservation_that_cannot_be_judged_is_named_in_the_refusal() {
    let t = TempDir::new("cache-reserve-bad");
    let store = reserving_store(&t.path().join("state"));
    let dir = store.root().join(reserve::RESERVATIONS);
    fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("garbage");
    fs::write(&bad, "not a reservation").unwrap();
    let held = nix::fcntl::Flock::lock(
        fs::File::open(&bad).unwrap(),
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    )
    .unwrap();
    let err = reserve::reserve(store.root(), TEN_MIB, store.disk, store.measure).unwrap_err();
    assert!(
        err.contains("garbage: cannot tell what room a cache save in progress holds"),
        "{err}"
    );
    assert!(
        err.contains("remove it if no `bulwark run` is saving"),
        "{err}"
    );
    assert!(!err.contains(&u64::MAX.to_string()), "{err}");
    drop(held);
}
