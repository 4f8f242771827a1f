//! A job's build caches (see [`crate::cache`] for the design): restored into the job directory
//! before the job's files are handed to its uid, mounted at `/cache`, saved after a job that
//! succeeded, with both recorded in `result.json` and so in provenance.

use serde_json::json;

use super::{JobRun, Stop};
use crate::cache::{configured_room, Store};
use crate::creds::mask::Finder;
use crate::workspace::JobDir;

impl JobRun<'_> {
    /// What a job's caches are kept under: where its source came from (`git:<url>`,
    /// `url:<url>`, `local:file://<dir>`), or `none` for a job without one.
    fn cache_scope(&self) -> String {
        let source = &self.inputs.source;
        match (
            source.get("kind").and_then(|k| k.as_str()),
            source.get("uri").and_then(|u| u.as_str()),
        ) {
            (Some(kind), Some(uri)) => format!("{kind}:{uri}"),
            _ => "none".into(),
        }
    }

    /// Makes `/cache` and restores each declared cache into it, all of it owned by `host_uid`
    /// when given (root mode: set as each entry is made); `false` when the job declares none
    /// (then nothing is made). Any failure refuses the job: a stored cache that is not what
    /// was saved must not reach a build.
    pub(super) fn restore_caches(
        &mut self,
        jobdir: &JobDir,
        host_uid: Option<u32>,
    ) -> Result<bool, Stop> {
        let caches = &self.job.spec.caches;
        if caches.is_empty() {
            return Ok(false);
        }
        let store = Store::of(self.config)
            .map_err(|e| Stop::Refused(format!("caches: {e}")))?
            .with_config_arg(self.args.config.as_deref());
        let scope = self.cache_scope();
        let trust = self.args.trust;
        let owner = host_uid.map(|uid| (uid, uid));
        let make = |dir: &std::path::Path| {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .and_then(|()| match owner {
                    // Made by the runner just now, under the job directory only it can write.
                    Some((uid, gid)) => std::os::unix::fs::lchown(dir, Some(uid), Some(gid)),
                    None => Ok(()),
                })
                .map_err(|e| Stop::Refused(format!("caches: creating {}: {e}", dir.display())))
        };
        make(&jobdir.cache)?;
        let mut records = Vec::new();
        for (i, cache) in caches.iter().enumerate() {
            let dst = jobdir.cache.join(&cache.name);
            make(&dst)?;
            let room = self.workspace_room(jobdir)?;
            let restored = store
                .restore(&scope, &cache.name, trust, &dst, room, owner)
                .map_err(|e| Stop::Refused(format!("caches[{i}] ({}): {}", cache.name, cut(&e))))?;
            if !self.args.quiet {
                match &restored {
                    Some(r) => eprintln!(
                        "bulwark: cache {} restored from the {} store ({} files, {} bytes)",
                        cache.name,
                        r.tier.as_str(),
                        r.files,
                        r.bytes
                    ),
                    None => eprintln!("bulwark: cache {} starts empty", cache.name),
                }
            }
            let restored = restored.map(|r| {
                json!({
                    "tier": r.tier.as_str(),
                    "generation": r.generation,
                    "tree_sha256": r.tree_sha256,
                    "files": r.files,
                    "bytes": r.bytes,
                    "saved": r.saved,
                })
            });
            records.push(json!({
                "name": cache.name,
                "scope": scope,
                "restored": restored,
            }));
        }
        self.inputs.caches = records;
        Ok(true)
    }

    /// Saves each cache of a job that succeeded (every job process gone, its files the
    /// runner's again). A cache that cannot be saved (over `caches.max_size`, say) leaves the
    /// previous one in place and is said, not a failure of the job.
    ///
    /// A job that was given credentials saves no cache holding any of their values (the first
    /// ones, and every newer one sent on to it), as issued or in a form the log would mask: a
    /// trusted job's cache is restored by pull requests. That holds for every save of such a
    /// job, whatever its tier (only trusted jobs get credentials; should that ever change, an
    /// untrusted tier is read by other pull requests too). A job without credentials is
    /// copied as before, searched for nothing.
    pub(super) fn save_caches(&mut self, jobdir: &JobDir) {
        if self.job.spec.caches.is_empty() {
            return;
        }
        let store = Store::of(self.config);
        let scope = self.cache_scope();
        let trust = self.args.trust;
        // The store keeps the disk reserve on its filesystem (the state directory's), with
        // every other save in progress (`cache::reserve`).
        let configured = configured_room(&self.config.caches);
        let refuse = (!self.masks.is_empty()).then(|| {
            Finder::new(
                self.masks
                    .iter()
                    .map(|m| (m.credential.as_str(), m.expose())),
            )
        });
        for (i, cache) in self.job.spec.caches.iter().enumerate() {
            let saved = store.clone().and_then(|store| {
                store.save_refusing(
                    &scope,
                    &cache.name,
                    trust,
                    &jobdir.cache.join(&cache.name),
                    configured,
                    &self.job.spec.name,
                    &self.invocation_id,
                    refuse.as_ref(),
                )
            });
            let record = match saved {
                // Which other caches a save pushed out is the operator's business (the
                // runner's log says, at info level), not the job's: it would tell a pull request about other
                // projects' builds.
                Ok(s) => json!({
                    "tier": s.tier.as_str(),
                    "generation": s.generation,
                    "tree_sha256": s.tree_sha256,
                    "files": s.files,
                    "bytes": s.bytes,
                }),
                Err(e) => {
                    let why = format!("not saved (an earlier save stays): {}", cut(&e));
                    eprintln!(
                        "bulwark: warning: cache {}: {}",
                        cache.name,
                        super::visible_line(&why)
                    );
                    json!(why)
                }
            };
            if let Some(entry) = self.inputs.caches.get_mut(i) {
                entry["saved"] = record;
            }
        }
    }
}

/// A store's message for stderr and `result.json`, cut to 2000 characters: it may quote names
/// a job chose (a path deep in its cache). Escaped where it is printed (`visible_line`);
/// `result.json` keeps it as it was, as it keeps a reason.
fn cut(message: &str) -> String {
    match message.char_indices().nth(2000) {
        None => message.to_owned(),
        Some((cut, _)) => format!("{}… ({} bytes in all)", &message[..cut], message.len()),
    }
}
