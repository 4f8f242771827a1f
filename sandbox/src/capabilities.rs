//! Capabilities: a job process holds none, in any set, and cannot regain any on exec.
//!
//! Order (measured on these hosts, and as the kernel requires): the bounding set first, because
//! dropping from it needs CAP_SETPCAP, which the later steps remove; then ambient, then
//! inheritable, effective and permitted. With an empty bounding set even uid 0 regains nothing
//! on exec. Note these are capabilities *in the job's user namespace*: they never meant
//! anything on the host, but they do govern the job's own mount, network and uts namespaces.

use caps::CapSet;

/// A capability set could not be cleared.
#[derive(Debug, thiserror::Error)]
#[error("clearing the {set} capability set: {message}")]
pub struct CapsError {
    set: &'static str,
    message: String,
}

/// Empties every capability set of the calling thread, bounding set first.
pub fn drop_all() -> Result<(), CapsError> {
    for cap in 0..=crate::sys::cap_last_cap() {
        crate::sys::capbset_drop(cap).map_err(|e| CapsError {
            set: "bounding",
            message: e.to_string(),
        })?;
    }
    crate::sys::ambient_clear_all().map_err(|e| CapsError {
        set: "ambient",
        message: e.to_string(),
    })?;
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
    // Verify rather than trust the three sets capset wrote (one capget each). The bounding and
    // ambient sets are not read back one capability at a time (82 more prctl calls on every
    // job start): each drop above returned success, which is the kernel's statement that the
    // bit is clear, and the containment tests read every Cap* line from the job's own view.
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
