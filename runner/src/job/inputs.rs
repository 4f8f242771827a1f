//! What goes into a job before it runs: its source (a local directory, a tarball or a git
//! commit), its pinned tools and its pinned root filesystem. Each is fetched or copied by the
//! runner, verified, and recorded in `result.json` (and so in provenance); any failure refuses
//! the job before a step runs.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::stat::Mode;

use super::{JobRun, Stop};
use crate::config::Dirs;
use crate::disk_reserve::Room;
use crate::workspace::JobDir;

impl JobRun<'_> {
    /// The local directory to copy into the workspace, open, with its canonical path:
    /// `--source` as the operator gave it, or the spec's `[source] path`, which must lie in the
    /// job file's directory.
    ///
    /// The spec is untrusted and the runner copies with its own privileges (as root, every
    /// file it can read, handed to the job's uid), so a spec naming `/etc` or the runner's
    /// state directory would give the job `/etc/shadow` or the signing key. A spec may only
    /// pick a directory beside or below itself: `[source] path` is opened beneath the directory
    /// the spec was read from, through that directory's descriptor (`openat2` with
    /// `RESOLVE_BENEATH`: no `..` above it, no absolute path or symlink), and what was opened
    /// is what is checked and copied. Judged by path instead (canonicalize, check, open again),
    /// whoever may rename a directory on the way (the user a CI checks pull requests out as)
    /// could swap it for a symlink between the check and the copy, or after the spec was read,
    /// and have root copy `/root` into the job; any other directory takes the operator's
    /// `--source`.
    pub(super) fn source_dir(&self) -> Result<Option<SourceDir>, Stop> {
        use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
        let real_path = |fd: &OwnedFd| {
            std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .map_err(|e| Stop::Refused(format!("source: locating the opened directory: {e}")))
        };
        let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        if let Some(s) = &self.args.source {
            let refuse =
                |e: &dyn std::fmt::Display| Stop::Refused(format!("source {}: {e}", s.display()));
            let abs = std::fs::canonicalize(s).map_err(|e| refuse(&e))?;
            let fd = nix::fcntl::open(&abs, dir_flags | OFlag::O_NOFOLLOW, Mode::empty())
                .map_err(|e| refuse(&std::io::Error::from(e)))?;
            let path = real_path(&fd)?;
            return Ok(Some(SourceDir { path, fd }));
        }
        let Some(p) = self.job.spec.source.as_ref().and_then(|s| s.path.as_ref()) else {
            return Ok(None);
        };
        let base = real_path(&self.spec_dir)?;
        let how = OpenHow::new()
            .flags(dir_flags)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = nix::fcntl::openat2(&self.spec_dir, p.as_str(), how).map_err(|e| match e {
            nix::errno::Errno::EXDEV => Stop::Refused(format!(
                "source.path {p:?} leads outside the job file's directory {}; a job spec may \
                 only name a directory beside or below itself, through no absolute path or \
                 absolute symlink: give any other directory with --source",
                base.display()
            )),
            e => Stop::Refused(format!(
                "source {}: {}",
                base.join(p).display(),
                std::io::Error::from(e)
            )),
        })?;
        let dir = real_path(&fd)?;
        if !dir.starts_with(&base) {
            // Cannot happen (the kernel resolved it beneath), but the check is cheap.
            return Err(Stop::Refused(format!(
                "source.path {p:?} resolves to {}, outside the job file's directory {}; a job \
                 spec may only name a directory beside or below itself: give any other \
                 directory with --source",
                dir.display(),
                base.display()
            )));
        }
        // Beside the job file is not enough when the job file sits above the runner's own
        // directories (`~/job.toml` with `path = ".local/state/bulwark"`, or `/job.toml` as
        // root): the state directory (keys) and the runtime directory, which are the runner's
        // alone, are never copied, nor is anything in them or holding them; nor is a directory
        // holding the configuration file or the --key file.
        let dirs = Dirs::resolve(self.config).map_err(|e| Stop::Refused(format!("{e:#}")))?;
        let config_file = self
            .args
            .config
            .clone()
            .unwrap_or_else(crate::config::default_config_path);
        let canonical_or = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
        let config_file = canonical_or(config_file);
        let owned = [dirs.state, dirs.runtime].map(canonical_or);
        // A signing key given with --key (e.g. `bulwark keygen --out keys` beside the job
        // file) is never copied either.
        let key_file = self.args.key.clone().map(canonical_or);
        let clash = owned
            .iter()
            .find(|own| dir.starts_with(own) || own.starts_with(&dir))
            .or_else(|| config_file.starts_with(&dir).then_some(&config_file))
            .or_else(|| key_file.as_ref().filter(|k| k.starts_with(&dir)));
        if let Some(own) = clash {
            return Err(Stop::Refused(format!(
                "source.path {p:?} resolves to {}, which holds or lies in the runner's own \
                 {}; a job spec may never copy that: give the source with --source",
                dir.display(),
                own.display()
            )));
        }
        Ok(Some(SourceDir { path: dir, fd }))
    }

    /// What a fetch or copy may still add to the filesystem of `path` before it falls below
    /// `limits.min_free_disk` (unbounded when that check is off); refuses the job when it is
    /// below already. Asked before every input the runner writes, so a spec's tools, root
    /// filesystem or source (kept in the store after the job) can never take a host's disk
    /// past the reserve, which the job's own writes are held to while it runs.
    pub(super) fn room_on(&self, path: &Path) -> Result<Room, Stop> {
        let Some(reserve) =
            crate::disk_reserve::Reserve::new(path, self.config.limits.min_free_disk)
        else {
            return Ok(Room::default());
        };
        let refuse = |e: crate::disk_reserve::CheckError| {
            Stop::Refused(format!(
                "{e}; free space there, or lower limits.min_free_disk"
            ))
        };
        let space = reserve.space().map_err(refuse)?;
        reserve.judge(&space, 0).map_err(refuse)?;
        Ok(space.room())
    }

    /// What copying or fetching the source may add to the workspace: on a disk of the job's
    /// own, as much as that disk takes (it is preallocated, so the host's filesystem loses
    /// nothing more, and a full disk fails the write); otherwise [`JobRun::room_on`] the
    /// host's filesystem.
    pub(super) fn workspace_room(&self, jobdir: &JobDir) -> Result<Room, Stop> {
        match jobdir.disk {
            Some(_) => Ok(Room::default()),
            None => self.room_on(&jobdir.workspace),
        }
    }

    /// The refusal for a source that could not be copied into the workspace, saying when it
    /// was the job's own disk that was too small.
    pub(super) fn copy_refusal(&self, jobdir: &JobDir, e: crate::source::CopyError) -> Stop {
        match (&jobdir.disk, e.source.raw_os_error()) {
            (Some((_, size)), Some(nix::libc::ENOSPC)) => Stop::Refused(format!(
                "{e}: the source does not fit on the job's disk of {} (resources.disk)",
                bulwark_protocol::format_size(*size)
            )),
            _ => Stop::Refused(e.to_string()),
        }
    }

    /// The tool store (shared by tools, url sources and rootfs) and the runner's fetch rules.
    pub(super) fn store_and_policy(
        &self,
    ) -> Result<(crate::tools::Store, crate::tools::FetchPolicy), Stop> {
        let dirs = Dirs::resolve(self.config).map_err(|e| Stop::Refused(format!("{e:#}")))?;
        let store = crate::tools::open_for_jobs(&dirs.state)
            .map_err(|e| Stop::Refused(format!("tool store: {e:#}")))?;
        let mut policy = crate::tools::FetchPolicy::from_config(self.config)
            .map_err(|e| Stop::Refused(format!("fetch configuration: {e}")))?;
        policy.deadline = self.inputs_deadline;
        Ok((store, policy))
    }

    /// How long all of the job's tools, root filesystem and url source may take together:
    /// its timeout, or `fetch.timeout` when that is longer.
    pub(super) fn inputs_budget(&self) -> std::time::Duration {
        self.job.timeout.max(self.config.fetch.timeout)
    }

    /// A tool store error as the job's refusal reason: the whole chain, bounded, saying so
    /// when the time for the job's inputs ran out (a download then stops with its timeout cut
    /// to what was left, and its own message names only `fetch.timeout`).
    fn store_refusal(&self, e: crate::tools::ToolError) -> Stop {
        let reason = format!("{:#}", anyhow::Error::from(e));
        let late = self
            .inputs_deadline
            .is_some_and(|d| std::time::Instant::now() >= d);
        let reason = if late {
            format!(
                "the job's tools, root filesystem and source were not all in within {} (its \
                 timeout, or fetch.timeout when longer): {reason}",
                bulwark_protocol::format_duration(self.inputs_budget())
            )
        } else {
            reason
        };
        Stop::Refused(bounded(reason, MAX_REASON_CHARS))
    }

    /// A `[source] url` tarball: fetched and verified like a tool (same store, same address
    /// and archive rules, device nodes skipped and setuid bits stripped), then copied into the
    /// workspace without following links, which also yields its tree digest.
    pub(super) fn fetch_url_source(
        &mut self,
        url: &str,
        sha256: &str,
        jobdir: &JobDir,
        owner: Option<(u32, u32)>,
    ) -> Result<(), Stop> {
        let (store, mut policy) = self.store_and_policy()?;
        policy.room = self.room_on(store.root())?;
        let spec = bulwark_protocol::ToolSpec {
            name: "source".into(),
            url: url.to_string(),
            sha256: sha256.to_string(),
            format: None,
        };
        let r = store
            .ensure(&spec, &policy, crate::tools::UnpackMode::Rootfs)
            .map_err(|e| self.store_refusal(e))?;
        // The URL must have served these bytes to this run: it is what provenance says the
        // source came from. Unless `ensure` downloaded it just now (decided under the
        // digest's lock), the store's copy came from some other job, maybe from anywhere.
        if !r.fetched {
            store
                .confirm_origin(&spec, &policy)
                .map_err(|e| self.store_refusal(e))?;
        }
        let room = self.workspace_room(jobdir)?;
        let stats = crate::source::copy_tree(
            &r.dir,
            &jobdir.workspace,
            crate::source::Tree::Source,
            room,
            owner,
        )
        .map_err(|e| self.copy_refusal(jobdir, e))?;
        self.inputs.source = serde_json::json!({
            "kind": "url",
            "uri": crate::tools::fetch::display_url(url),
            "sha256": sha256,
            "tree_sha256": crate::source::tree_digest(&stats.entries),
            "files": stats.files,
            "bytes": stats.bytes,
        });
        Ok(())
    }

    /// A pinned `[rootfs]`: ensured in the store like a tool (device nodes skipped,
    /// setuid/setgid stripped), recorded as an input; the sandbox then shows it instead of the
    /// host's system directories.
    pub(super) fn resolve_rootfs(&mut self) -> Result<Option<PathBuf>, Stop> {
        let Some(rootfs) = self.job.spec.rootfs.clone() else {
            return Ok(None);
        };
        let (store, mut policy) = self.store_and_policy()?;
        policy.room = self.room_on(store.root())?;
        let spec = bulwark_protocol::ToolSpec {
            name: "rootfs".into(),
            url: rootfs.url.clone(),
            sha256: rootfs.sha256.clone(),
            format: rootfs.format,
        };
        let r = store
            .ensure(&spec, &policy, crate::tools::UnpackMode::Rootfs)
            .map_err(|e| self.store_refusal(e))?;
        self.inputs.rootfs = Some(
            serde_json::json!({ "url": crate::tools::fetch::display_url(&r.url), "sha256": r.sha256 }),
        );
        self.trees_in_use.push(r.in_use.clone());
        Ok(Some(r.dir))
    }

    /// Ensures every `[[tools]]` entry is in the store, verified; records them as inputs.
    pub(super) fn resolve_tools(&mut self) -> Result<Vec<crate::tools::Resolved>, Stop> {
        if self.job.spec.tools.is_empty() {
            return Ok(Vec::new());
        }
        let (store, mut policy) = self.store_and_policy()?;
        let mut resolved = Vec::new();
        for tool in &self.job.spec.tools {
            // Asked again for every tool: each one fetched takes from what is left.
            policy.room = self.room_on(store.root())?;
            let r = store
                .ensure(tool, &policy, crate::tools::UnpackMode::Tool)
                .map_err(|e| self.store_refusal(e))?;
            if !self.args.quiet {
                eprintln!(
                    "bulwark: tool {} {} ({})",
                    r.name,
                    if r.cache_hit {
                        "from the store"
                    } else {
                        "fetched and verified"
                    },
                    r.sha256
                );
            }
            self.inputs.tools.push(serde_json::json!({ "name": r.name, "url": crate::tools::fetch::display_url(&r.url), "sha256": r.sha256 }));
            self.trees_in_use.push(r.in_use.clone());
            resolved.push(r);
        }
        Ok(resolved)
    }
}

/// A local source directory, open: what was checked is what is copied.
#[derive(Debug)]
pub(super) struct SourceDir {
    /// Its canonical path when it was opened (recorded in `result.json` and provenance).
    pub path: PathBuf,
    fd: OwnedFd,
}

impl SourceDir {
    /// Copies it into `dst` (see [`crate::source::copy_tree`]).
    pub fn copy_into(
        &self,
        dst: &Path,
        room: Room,
        owner: Option<(u32, u32)>,
    ) -> Result<crate::source::CopyStats, crate::source::CopyError> {
        crate::source::copy_tree_from(&self.fd, dst, crate::source::Tree::Source, room, owner)
    }
}

/// Most characters of a tool store refusal kept for `result.json` and stderr
/// (`JobRun::store_refusal`). The chain quotes what the job and the archive chose (the URL,
/// entry names, link targets); the archive module already shortens names, and this bound
/// holds whatever a future message quotes.
const MAX_REASON_CHARS: usize = 2000;

/// `text` cut to `max` characters, with `…` and the full length when cut.
fn bounded(text: String, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text,
        Some((cut, _)) => format!("{}… ({} bytes in all)", &text[..cut], text.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::bounded;

    #[test]
    fn a_refusal_reason_is_cut_with_its_length() {
        assert_eq!(bounded("short".into(), 10), "short");
        assert_eq!(
            bounded("é".repeat(12), 10),
            format!("{}… (24 bytes in all)", "é".repeat(10))
        );
    }
}
