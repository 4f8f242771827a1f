//! `subuid` isolation mode, the runner's side: which ids this user may hand to jobs, and
//! handing a job's workspace to the job's ids and back.
//!
//! The mechanism (forking a mapper, `newuidmap`/`newgidmap`, the ownership walk) is in
//! `bulwark_sandbox::subid`. Here: the mode is chosen only by the operator
//! (`limits.isolation = "subuid"`), never guessed, and a runner that cannot provide it refuses
//! every job (exit 2) saying what is missing, rather than falling back to one uid.
//!
//! Ids: the job's uid and gid are equal (as in root mode), so a uid is usable only if this
//! user's `/etc/subuid` and `/etc/subgid` grants both contain it. `limits.job_uids`, when set,
//! must lie inside both; unset, the first granted uid range that also lies in a gid grant is
//! used (Debian's `useradd` grants the same range in both files). Leases work as in root mode
//! (`crate::uids`), locked in `/dev/shm/bulwark-subuid-leases-<uid>` (one place for every
//! runner of this user).
//!
//! A job's workspace is the runner's until the job starts: the runner copies the source in,
//! then [`hand_over`] gives every entry to the job's ids; after every job process is gone,
//! [`hand_over`] gives it back (adding the owner's permission bits), and only then does the
//! runner collect outputs and delete it. The job directory records the ids (`subids`) before
//! the first hand-over, so that after a run that died the next run can take its files back
//! before removing them.

use std::path::{Path, PathBuf};

use bulwark_protocol::UidRange;
use bulwark_sandbox::subid::{HandTo, OwnershipSpec, SubidMap, Tools};

use crate::helper_process::HelperBinary;

/// What subuid mode needs, checked once per run.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The runner's user name (how `/etc/subuid` names it).
    pub user: String,
    /// The runner's uid.
    pub uid: u32,
    /// Uids (equal to gids) jobs may get.
    pub range: UidRange,
    /// `newuidmap` and `newgidmap`.
    pub tools: Tools,
}

impl Setup {
    /// The map for a job leased `uid`.
    pub fn map_for(&self, uid: u32) -> SubidMap {
        SubidMap {
            uid,
            gid: uid,
            newuidmap: self.tools.newuidmap.clone(),
            newgidmap: self.tools.newgidmap.clone(),
        }
    }
}

/// Checks that this runner can give jobs subordinate ids, from `configured` (`limits.job_uids`)
/// or from its grants. The error says what is missing and how to fix it.
pub fn setup(configured: Option<UidRange>) -> Result<Setup, String> {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return Err(
            "subuid mode is for a runner that is not root; as root, jobs get their own uids \
             from limits.job_uids (isolation = \"root-per-job-uid\" or \"auto\")"
                .into(),
        );
    }
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .ok_or_else(|| format!("uid {uid} has no user name in the user database"))?;
    let read = |file: &str| {
        std::fs::read_to_string(file).map_err(|e| {
            format!(
                "{file}: {e}; grant this user a subordinate range (usermod --add-subuids \
                 FIRST-LAST --add-subgids FIRST-LAST {user})"
            )
        })
    };
    let uids = bulwark_sandbox::subid::granted_ranges(&read("/etc/subuid")?, &user, uid.as_raw());
    let gids = bulwark_sandbox::subid::granted_ranges(&read("/etc/subgid")?, &user, uid.as_raw());
    let range = usable_range(configured, &uids, &gids).map_err(|e| format!("{e} (user {user})"))?;
    let tools = Tools::find()?;
    // Under no_new_privs (systemd's NoNewPrivileges=yes, `setpriv --no-new-privs`) the setuid
    // tools run without privilege and map nothing: say so now, not through their error.
    let nnp = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("NoNewPrivs:"))
                .map(|v| v.trim() == "1")
        })
        .unwrap_or(false);
    if let Some(option) =
        proc_hides_pids(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
    {
        return Err(format!(
            "/proc is mounted with {option}: this runner could not see the processes of its \
             jobs' uids, and it hands a uid out again, or a job's files back, only once none \
             is left; mount /proc without hidepid"
        ));
    }
    if nnp {
        return Err(format!(
            "this process runs with no_new_privs (systemd's NoNewPrivileges=yes?), under which \
             the set-user-id {} cannot work; run the runner without it",
            tools.newuidmap.display()
        ));
    }
    Ok(Setup {
        user,
        uid: uid.as_raw(),
        range,
        tools,
    })
}

/// The `hidepid` option of the `/proc` mount in `mountinfo`, unless it hides nothing.
fn proc_hides_pids(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if left.split_whitespace().nth(4) != Some("/proc") {
            return None;
        }
        let options = right.split_whitespace().nth(2)?;
        options
            .split(',')
            .find(|o| o.starts_with("hidepid=") && !matches!(*o, "hidepid=0" | "hidepid=off"))
            .map(str::to_owned)
    })
}

/// The uids both grants contain: `configured` if it lies inside both, else the first granted
/// uid range's overlap with a gid grant.
fn usable_range(
    configured: Option<UidRange>,
    uids: &[(u32, u32)],
    gids: &[(u32, u32)],
) -> Result<UidRange, String> {
    if uids.is_empty() || gids.is_empty() {
        let which = if uids.is_empty() {
            "/etc/subuid"
        } else {
            "/etc/subgid"
        };
        return Err(format!(
            "{which} grants this user no subordinate range; add one (usermod --add-subuids \
             FIRST-LAST --add-subgids FIRST-LAST USER) with the same numbers in both files"
        ));
    }
    let inside =
        |r: &[(u32, u32)], first: u32, last: u32| r.iter().any(|(a, b)| *a <= first && last <= *b);
    if let Some(c) = configured {
        if inside(uids, c.first, c.last) && inside(gids, c.first, c.last) {
            return Ok(c);
        }
        return Err(format!(
            "limits.job_uids {c} is not inside this user's subordinate ranges (uids {}, gids \
             {}); a job's gid equals its uid, so it must lie in both",
            show(uids),
            show(gids)
        ));
    }
    for (ua, ub) in uids {
        for (ga, gb) in gids {
            let (first, last) = ((*ua).max(*ga), (*ub).min(*gb));
            if first <= last {
                return Ok(UidRange { first, last });
            }
        }
    }
    Err(format!(
        "this user's subordinate uid ranges ({}) and gid ranges ({}) share no id; a job's gid \
         equals its uid, so grant the same numbers in /etc/subuid and /etc/subgid",
        show(uids),
        show(gids)
    ))
}

fn show(r: &[(u32, u32)]) -> String {
    r.iter()
        .map(|(a, b)| format!("{a}-{b}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Hands `paths` (files, or trees walked without following symlinks) to the job's ids or back
/// to the runner's, through `bulwark-sandbox --ownership`.
pub fn hand_over(
    helper: &HelperBinary,
    ids: &SubidMap,
    to: HandTo,
    paths: &[PathBuf],
) -> Result<(), String> {
    // Handing back changes what a running process of the job could still be using; the
    // callers know the job's processes are gone (an empty cgroup, a reaped pid namespace),
    // and this is the independent check.
    if to == HandTo::Runner && crate::uids::in_use(ids.uid) {
        return Err(format!(
            "processes of uid {} are still running; its files stay as they are until a later \
             run finds it gone",
            ids.uid
        ));
    }
    let spec = OwnershipSpec {
        protocol: bulwark_sandbox::spec::PROTOCOL.to_string(),
        runner_pid: std::process::id(),
        subids: ids.clone(),
        to,
        paths: paths.to_vec(),
    };
    helper.run_ownership(&spec)
}

/// The record a job directory keeps of its job's ids: `"<uid> <gid>\n"`.
pub fn record(ids: &SubidMap) -> String {
    format!("{} {}\n", ids.uid, ids.gid)
}

/// Reads a record back, accepting it only for ids inside `setup`'s range (the record is the
/// runner's own file, but it decides whose files get changed).
pub fn from_record(setup: &Setup, text: &str) -> Option<SubidMap> {
    let mut f = text.split_whitespace();
    let uid: u32 = f.next()?.parse().ok()?;
    let gid: u32 = f.next()?.parse().ok()?;
    if f.next().is_some() || uid != gid || !(setup.range.first..=setup.range.last).contains(&uid) {
        return None;
    }
    Some(setup.map_for(uid))
}

/// The job directory's trees that belong to the job while it runs.
pub fn job_trees(workspace: &Path, tmp: &Path) -> Vec<PathBuf> {
    vec![workspace.to_path_buf(), tmp.to_path_buf()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(first: u32, last: u32) -> UidRange {
        UidRange { first, last }
    }

    #[test]
    fn the_usable_range_lies_in_both_grants() {
        let uids = [(100_000, 165_535)];
        let gids = [(100_000, 165_535)];
        assert_eq!(usable_range(None, &uids, &gids), Ok(r(100_000, 165_535)));
        assert_eq!(
            usable_range(Some(r(100_010, 100_019)), &uids, &gids),
            Ok(r(100_010, 100_019))
        );
        let e = usable_range(Some(r(200_000, 200_009)), &uids, &gids).unwrap_err();
        assert!(
            e.contains("limits.job_uids 200000-200009 is not inside"),
            "{e}"
        );
        // Overlapping but different grants: the overlap.
        assert_eq!(
            usable_range(None, &[(100_000, 165_535)], &[(150_000, 215_535)]),
            Ok(r(150_000, 165_535))
        );
        let e = usable_range(None, &[(100_000, 100_009)], &[(200_000, 200_009)]).unwrap_err();
        assert!(e.contains("share no id"), "{e}");
        let e = usable_range(None, &[], &gids).unwrap_err();
        assert!(
            e.contains("/etc/subuid grants this user no subordinate range"),
            "{e}"
        );
        let e = usable_range(None, &uids, &[]).unwrap_err();
        assert!(e.contains("/etc/subgid grants"), "{e}");
    }

    #[test]
    fn a_proc_that_hides_pids_is_found_in_mountinfo() {
        let line = |opts: &str| {
            format!(
                "22 27 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc {opts}\n"
            )
        };
        assert_eq!(proc_hides_pids(&line("rw")), None);
        assert_eq!(proc_hides_pids(&line("rw,hidepid=0")), None);
        assert_eq!(proc_hides_pids(&line("rw,hidepid=off")), None);
        assert_eq!(
            proc_hides_pids(&line("rw,hidepid=2")).as_deref(),
            Some("hidepid=2")
        );
        assert_eq!(
            proc_hides_pids(&line("rw,hidepid=invisible,gid=4")).as_deref(),
            Some("hidepid=invisible")
        );
        // Another mount point's options do not count.
        let other = "30 27 0:40 / /mnt/p rw shared:1 - proc proc rw,hidepid=2\n";
        assert_eq!(proc_hides_pids(other), None);
    }

    #[test]
    fn a_record_is_accepted_only_for_ids_of_the_range() {
        let setup = Setup {
            user: "b".into(),
            uid: 1001,
            range: r(100_000, 100_009),
            tools: Tools {
                newuidmap: "/usr/bin/newuidmap".into(),
                newgidmap: "/usr/bin/newgidmap".into(),
            },
        };
        let ids = setup.map_for(100_003);
        assert_eq!(from_record(&setup, &record(&ids)), Some(ids));
        for bad in [
            "",
            "100003",
            "100003 100004",
            "99999 99999",
            "100010 100010",
            "0 0",
            "1 1 1",
            "x y",
        ] {
            assert_eq!(from_record(&setup, bad), None, "{bad:?}");
        }
    }
}
