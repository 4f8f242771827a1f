//! Which namespaces a process is in, to prove the job's are its own.
//!
//! The helper records the namespaces it started in (the runner's) before it unshares; each
//! step's process compares its own with them just before exec, and refuses to run if any is
//! still the runner's. So `result.json` lists a namespace as confirmed because the kernel said
//! the job was in a different one, not because `unshare` returned success.

use std::os::unix::fs::MetadataExt;

/// The namespaces a job gets fresh, by their names under `/proc/self/ns`.
pub const JOB_NAMESPACES: &[&str] = &["user", "mnt", "pid", "net", "ipc", "uts", "cgroup"];

/// One namespace's identity: its name and the device and inode of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceId {
    /// Name under `/proc/self/ns`.
    pub name: &'static str,
    /// `st_dev` of the nsfs file.
    pub dev: u64,
    /// `st_ino` of the nsfs file.
    pub ino: u64,
}

/// The calling process's namespaces, as `/proc/self/ns` shows them.
pub fn current() -> std::io::Result<Vec<NamespaceId>> {
    JOB_NAMESPACES
        .iter()
        .map(|name| {
            let m = std::fs::metadata(format!("/proc/self/ns/{name}"))?;
            Ok(NamespaceId {
                name,
                dev: m.dev(),
                ino: m.ino(),
            })
        })
        .collect()
}

/// The names of `ours` that differ from `outer`; an error naming the first one that does not.
pub fn confirm_fresh(ours: &[NamespaceId], outer: &[NamespaceId]) -> Result<Vec<String>, String> {
    let mut fresh = Vec::new();
    for name in JOB_NAMESPACES {
        let find = |list: &[NamespaceId]| list.iter().find(|n| n.name == *name).copied();
        match (find(ours), find(outer)) {
            (Some(a), Some(b)) if (a.dev, a.ino) != (b.dev, b.ino) => fresh.push((*name).into()),
            (Some(_), Some(_)) => {
                return Err(format!("the job's {name} namespace is the runner's own"))
            }
            _ => return Err(format!("the {name} namespace could not be identified")),
        }
    }
    Ok(fresh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_shared_with_the_runner_is_refused_by_name() {
        let here = current().unwrap();
        assert_eq!(here.len(), JOB_NAMESPACES.len());
        let err = confirm_fresh(&here, &here).unwrap_err();
        assert!(err.contains("user namespace is the runner's"), "{err}");
        let mut other = here.clone();
        for n in &mut other {
            n.ino += 1;
        }
        assert_eq!(confirm_fresh(&other, &here).unwrap().len(), 7);
        other[3].ino = here[3].ino;
        let err = confirm_fresh(&other, &here).unwrap_err();
        assert!(err.contains("net namespace"), "{err}");
        let err = confirm_fresh(&other[..2], &here).unwrap_err();
        assert!(err.contains("could not be identified"), "{err}");
    }
}
