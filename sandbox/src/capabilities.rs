//! Capabilities: a job process holds none, in any set, and cannot regain any on exec; the
//! job's init holds none it could use once the job's root is built.
//!
//! Order (measured on these hosts, and as the kernel requires): the bounding set first, because
//! dropping from it needs CAP_SETPCAP, which the later steps remove; then ambient, then
//! inheritable, effective and permitted. With an empty bounding set even uid 0 regains nothing
//! on exec. Note these are capabilities *in the job's user namespace*: they never meant
//! anything on the host, but they do govern the job's own mount, network and uts namespaces.
//!
//! Init needs them to build the job's root, name the host and bring up loopback; after that it
//! only forks, signals and reaps processes of its own uid and relays bytes, none of which takes
//! a capability. So it gives them up ([`drop_for_init`]) before the first step: a job that took
//! over init (through a flaw in its forwarder, say) would find no power to remount or
//! reconfigure its namespaces. One capability stays in init's *permitted* set, never
//! effective: `CAP_WAKE_ALARM`, which the kernel checks only against the initial user
//! namespace (alarm timers), so it grants nothing here. It is there because the kernel's own
//! guards between processes of one uid compare permitted sets: a process may reschedule,
//! renice or change the I/O priority of another (`cap_safe_nice`), or trace it
//! (`cap_ptrace_access_check`), only when the target's permitted set is a subset of its own.
//! With an empty set, init would fall to any job process of its uid there; with this one,
//! it stays above all of them, as it was with its full set.

use caps::{CapSet, Capability, CapsHashSet};

/// The one capability init keeps, permitted only (see the module docs).
pub const INIT_MARKER: Capability = Capability::CAP_WAKE_ALARM;

/// A capability set could not be cleared.
#[derive(Debug, thiserror::Error)]
#[error("clearing the {set} capability set: {message}")]
pub struct CapsError {
    set: &'static str,
    message: String,
}

/// Empties every capability set of the calling thread, bounding set first.
pub fn drop_all() -> Result<(), CapsError> {
    clear_bounding_and_ambient()?;
    for (set, name) in [
        (CapSet::Inheritable, "inheritable"),
        (CapSet::Effective, "effective"),
        (CapSet::Permitted, "permitted"),
    ] {
        caps::clear(None, set).map_err(|e| CapsError {
            set: name,
            message: e.to_string(),
        })?;
    }
    verify_empty()
}

/// Init, once the job's root is built: empties the bounding, ambient, inheritable and
/// effective sets, and the permitted set but for [`INIT_MARKER`]. Checked by reading back.
pub fn drop_for_init() -> Result<(), CapsError> {
    clear_bounding_and_ambient()?;
    let marker: CapsHashSet = [INIT_MARKER].into_iter().collect();
    for (set, name, keep) in [
        (CapSet::Inheritable, "inheritable", CapsHashSet::new()),
        (CapSet::Effective, "effective", CapsHashSet::new()),
        (CapSet::Permitted, "permitted", marker.clone()),
    ] {
        caps::set(None, set, &keep).map_err(|e| CapsError {
            set: name,
            message: e.to_string(),
        })?;
        let left = caps::read(None, set).map_err(|e| CapsError {
            set: name,
            message: e.to_string(),
        })?;
        if left != keep {
            return Err(CapsError {
                set: name,
                message: format!("holds {left:?}, expected {keep:?}"),
            });
        }
    }
    Ok(())
}

/// Empties the bounding set (bits still set only: dropping one needs CAP_SETPCAP, which a job
/// process forked from init no longer has, while init cleared the whole set already) and
/// the ambient set.
fn clear_bounding_and_ambient() -> Result<(), CapsError> {
    for cap in 0..=crate::sys::cap_last_cap() {
        let set = crate::sys::capbset_read(cap).map_err(|e| CapsError {
            set: "bounding",
            message: e.to_string(),
        })?;
        if set {
            crate::sys::capbset_drop(cap).map_err(|e| CapsError {
                set: "bounding",
                message: e.to_string(),
            })?;
        }
    }
    crate::sys::ambient_clear_all().map_err(|e| CapsError {
        set: "ambient",
        message: e.to_string(),
    })
}

/// Reads back the inheritable, effective and permitted sets; each must be empty.
fn verify_empty() -> Result<(), CapsError> {
    // Verify rather than trust the three sets capset wrote (one capget each). The bounding and
    // ambient sets are not read back after the drops (41 more prctl calls on every job start):
    // each drop returned success, which is the kernel's statement that the bit is clear, and
    // the containment tests read every Cap* line from the job's own view.
    for (set, name) in [
        (CapSet::Inheritable, "inheritable"),
        (CapSet::Effective, "effective"),
        (CapSet::Permitted, "permitted"),
    ] {
        let left = caps::read(None, set).map_err(|e| CapsError {
            set: name,
            message: e.to_string(),
        })?;
        if !left.is_empty() {
            return Err(CapsError {
                set: name,
                message: format!("still holds {left:?}"),
            });
        }
    }
    Ok(())
}
