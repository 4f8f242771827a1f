//! Landlock: the filesystem allowlist a job process runs under, independent of mounts and DAC.
//!
//! Mounts decide what exists in the job's view; Landlock decides what the job may do with it,
//! and holds even if a mount is misconfigured or a later kernel bug exposes a path. The ruleset
//! mirrors the mounts: system paths and tools read and execute, `/workspace` `/tmp` `/dev/shm`
//! (and `/cache` when the job has caches) read-write, a few device nodes read-write, `/proc`
//! read, and `/run/credentials/<name>` read for each credential the step may read (so one step
//! of a trusted job can hold a credential the others cannot read). Listing directories is
//! allowed from `/` down; every other right on anything else, such as
//! [`crate::mount::LANDLOCK_CANARY`], is denied by Landlock alone.
//!
//! Compatibility: we ask the kernel which ABI it has, take the full filesystem feature set of
//! that ABI (capped at the newest we have tested, 7) as a *hard requirement*, and add the ABI 6
//! scopes (abstract unix sockets, signals) where the kernel has them. Below ABI 3 (no truncate
//! control) the job is refused. Network rules are deliberately not used: the network namespace
//! is the boundary, and a job's own loopback servers must work.

use landlock::{
    Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, RestrictionStatus, Ruleset,
    RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

/// Lowest ABI the sandbox accepts.
pub const MIN_ABI: u32 = 3;
/// Newest ABI this code has been tested against.
pub const MAX_TESTED_ABI: u32 = 7;

/// Why Landlock could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// The kernel lacks Landlock or an ABI we need.
    #[error("kernel Landlock ABI {found} is below the required {MIN_ABI} (or Landlock is disabled at boot)")]
    Unsupported {
        /// ABI the kernel reported.
        found: u32,
    },
    /// Building or applying the ruleset failed.
    #[error("ruleset: {0}")]
    Ruleset(#[from] landlock::RulesetError),
    /// The prepared ruleset could not be duplicated for a step.
    #[error("duplicating the ruleset: {0}")]
    Clone(String),
    /// A step's credential name that is not a plain file name.
    #[error("credential name {0:?} is not a plain name")]
    CredentialName(String),
    /// The kernel accepted the ruleset but did not enforce all of it.
    #[error("ruleset not fully enforced: {0:?}")]
    NotFullyEnforced(RestrictionStatus),
}

/// What was enforced.
#[derive(Debug, Clone, Copy)]
pub struct LandlockApplied {
    /// ABI whose feature set is enforced.
    pub abi: u32,
    /// ABI 6 scopes are enforced.
    pub scoped: bool,
}

/// The ABI that [`restrict_self`] would enforce on this kernel (0 when below [`MIN_ABI`]).
pub fn usable_abi() -> u32 {
    let k = crate::sys::landlock_abi_version();
    if k < MIN_ABI {
        0
    } else {
        k.min(MAX_TESTED_ABI)
    }
}

/// A job ruleset, built by init (after pivot_root, so the paths are the job's) for each
/// distinct set of credentials steps may read ([`StepRulesets`]), and applied by the
/// processes of those steps. Building it does not restrict init itself.
#[derive(Debug)]
pub struct JobRuleset {
    created: RulesetCreated,
    abi: u32,
    scoped: bool,
}

/// The rulesets of a job's steps: one per distinct set of credentials a step may read
/// (`/run/credentials/<name>` is readable only under a rule naming it), so a job without
/// credentials, or whose steps all read the same ones, builds one. Sets are compared as
/// sets: the order a step lists its credentials in does not matter.
#[derive(Debug)]
pub struct StepRulesets {
    sets: Vec<(std::collections::BTreeSet<String>, JobRuleset)>,
}

impl StepRulesets {
    /// Builds a ruleset for each distinct `credentials` of `steps`.
    pub fn prepare(steps: &[crate::spec::StepSpec]) -> Result<StepRulesets, LandlockError> {
        let mut sets: Vec<(std::collections::BTreeSet<String>, JobRuleset)> = Vec::new();
        for step in steps {
            let names = step.credentials.iter().cloned().collect();
            if !sets.iter().any(|(known, _)| *known == names) {
                sets.push((names, prepare(&step.credentials)?));
            }
        }
        Ok(StepRulesets { sets })
    }

    /// The ruleset built for `step`'s credentials.
    pub fn for_step(&self, step: &crate::spec::StepSpec) -> Option<&JobRuleset> {
        let names: std::collections::BTreeSet<String> = step.credentials.iter().cloned().collect();
        self.sets
            .iter()
            .find(|(known, _)| *known == names)
            .map(|(_, ruleset)| ruleset)
    }
}

/// Builds a job ruleset for this kernel, under which the credentials named in `credentials`
/// (and no other) can be read.
fn prepare(credentials: &[String]) -> Result<JobRuleset, LandlockError> {
    let found = crate::sys::landlock_abi_version();
    let abi_n = usable_abi();
    if abi_n == 0 {
        return Err(LandlockError::Unsupported { found });
    }
    let abi = ABI::from(abi_n as i32);
    let all = AccessFs::from_all(abi);
    let read = AccessFs::from_read(abi);
    let read_dir = landlock::BitFlags::from(AccessFs::ReadDir);
    let read_write = all;
    // Device nodes: read, write, truncate and (ABI 5) ioctl on the node itself.
    let dev_file = AccessFs::from_file(abi);

    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(all)?;
    let scoped = abi_n >= 6;
    if scoped {
        ruleset = ruleset.scope(Scope::from_all(abi))?;
    }
    let mut rules: Vec<PathBeneath<PathFd>> = Vec::new();
    let mut add = |path: &str, access: landlock::BitFlags<AccessFs>| {
        // A path absent from this view (no /lib64 here) needs no rule.
        if let Ok(fd) = PathFd::new(path) {
            rules.push(PathBeneath::new(fd, access));
        }
    };
    add("/", read_dir);
    for p in [
        "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/tools",
    ] {
        add(p, read);
    }
    // Any other top-level directory comes from a pinned rootfs (/opt, /var, ...): read and
    // execute, like the system directories. Nothing else is at the top of the job's view.
    if let Ok(entries) = std::fs::read_dir("/") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let special = [
                "proc",
                "dev",
                "tmp",
                "workspace",
                "tools",
                "cache",
                "usr",
                "bin",
                "sbin",
                "lib",
                "lib32",
                "lib64",
                "libx32",
                "etc",
                "run",
            ];
            if special.contains(&name.as_str()) || name.starts_with('.') {
                continue;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                add(&format!("/{name}"), read);
            }
        }
    }
    add("/proc", AccessFs::ReadFile | AccessFs::ReadDir);
    // A trusted job's credentials (present only then), each only for the steps that may read
    // it: read, never execute. A name that is not a plain file name is refused, not joined
    // (`..` would name a directory above).
    for name in credentials {
        if !crate::mount::plain_name(name) {
            return Err(LandlockError::CredentialName(name.clone()));
        }
        add(
            &format!("{}/{name}", crate::mount::CREDENTIALS_DIR),
            AccessFs::ReadFile | AccessFs::ReadDir,
        );
    }
    // `/cache` exists only when the job has caches.
    for p in ["/workspace", "/tmp", "/dev/shm", "/cache"] {
        add(p, read_write);
    }
    for d in crate::mount::DEVICES {
        add(&format!("/dev/{d}"), dev_file);
    }
    let created = ruleset
        .create()?
        .add_rules(rules.into_iter().map(Ok::<_, landlock::RulesetError>))?;
    Ok(JobRuleset {
        created,
        abi: abi_n,
        scoped,
    })
}

impl JobRuleset {
    /// Restricts the calling process (and its future children) to the ruleset.
    /// `no_new_privs` must already be set.
    pub fn restrict_self(&self) -> Result<LandlockApplied, LandlockError> {
        let created = self
            .created
            .try_clone()
            .map_err(|e| LandlockError::Clone(e.to_string()))?;
        let status = created.restrict_self()?;
        if status.ruleset != RulesetStatus::FullyEnforced || !status.no_new_privs {
            return Err(LandlockError::NotFullyEnforced(status));
        }
        Ok(LandlockApplied {
            abi: self.abi,
            scoped: self.scoped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, credentials: &[&str]) -> crate::spec::StepSpec {
        crate::spec::StepSpec {
            name: name.into(),
            argv: vec!["/bin/true".into()],
            env: Vec::new(),
            timeout_ms: None,
            credentials: credentials.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// Steps that list the same credentials, in any order, share one ruleset; another set
    /// gets its own; a step with none gets the one without credentials.
    #[test]
    fn steps_reading_the_same_credentials_in_any_order_share_one_ruleset() {
        let steps = [
            step("a", &["aws", "vault"]),
            step("b", &["vault", "aws"]),
            step("c", &["aws"]),
            step("d", &[]),
        ];
        let rulesets = match StepRulesets::prepare(&steps) {
            Ok(r) => r,
            Err(LandlockError::Unsupported { found }) => {
                eprintln!("SKIP: this kernel's Landlock ABI is {found}; nothing to prepare");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        assert_eq!(rulesets.sets.len(), 3);
        let of = |i: usize| rulesets.for_step(&steps[i]).map(std::ptr::from_ref);
        assert_eq!(of(0), of(1));
        assert_ne!(of(0), of(2));
        assert_ne!(of(2), of(3));
        assert!(of(3).is_some());
    }
}
