//! The tool store: pinned tools and root filesystems, fetched by the runner, verified by
//! sha256 before anything uses them, unpacked read-only, shared between jobs.
//!
//! A job spec names each tool by URL and sha256. The runner (never the job) fetches it under
//! the same address rules as a job's egress ([`address`]), streams it into the store while
//! hashing ([`fetch`]), keeps it only when the digest matches, unpacks it with rules that keep
//! every entry inside its directory and without privileges ([`archive`]), makes it read-only
//! and publishes it by rename ([`store`]). A later job finds it with two `stat`s and no
//! request. `Store::verify_all` rehashes everything and quarantines what changed.
//!
//! ```no_run
//! use bulwark_runner::tools::{FetchPolicy, Store, UnpackMode};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = bulwark_protocol::Config::default();
//! let policy = FetchPolicy::from_config(&config)?;
//! let store = Store::open(std::path::Path::new("/var/lib/bulwark/tools"))?;
//! let tool = bulwark_protocol::ToolSpec {
//!     name: "jq".into(),
//!     url: "https://example.org/jq-1.7.tar.gz".into(),
//!     sha256: "0".repeat(64),
//!     format: None,
//! };
//! let resolved = store.ensure(&tool, &policy, UnpackMode::Tool)?;
//! println!("{} at {}", resolved.name, resolved.dir.display());
//! # Ok(()) }
//! ```
//!
//! Why a store of our own rather than a package manager or a container registry: a job pins
//! any URL and digest, and what we need is exactly "this file, verified, unpacked safely,
//! read-only", with the runner's network rules; a registry client would add trust in a
//! second party and a much larger parser surface. Tested by unit tests in each module and by
//! `tests/tests/tools.rs` (loopback servers, hostile archives, two processes racing).

pub mod address;
pub mod archive;
pub mod fetch;
pub mod store;

pub use address::{AddressPolicy, AddressRefused};
pub use archive::{ArchiveError, UnpackLimits, UnpackMode};
pub use fetch::{FetchError, FetchPolicy};
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;

pub use store::{Corrupt, InUse, PruneReport, Pruned, Resolved, Store, ToolError, VerifyReport};

/// Opens the store under the state directory for mounting into jobs: `<state>/tools` and its
/// `trees/` become 0711 so a job's unprivileged host uid can reach (not list) the verified tree
/// it mounts; blobs, locks, the temporary area and quarantine stay 0700.
pub fn open_for_jobs(state: &std::path::Path) -> Result<Store, ToolError> {
    use std::os::unix::fs::PermissionsExt;
    let store = Store::open(&state.join("tools"))?;
    for dir in [store.root().to_path_buf(), store.root().join("trees")] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).map_err(
            |source| ToolError::Store {
                path: dir.clone(),
                source,
            },
        )?;
    }
    Ok(store)
}
