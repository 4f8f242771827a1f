//! Git source: the runner (never the job) fetches `[source] git = URL, commit = SHA` into the
//! job's workspace, with git itself confined, and proves the checkout is exactly that commit.
//!
//! A job spec is untrusted, and so is the repository it names. Git is a large program with
//! many ways to run code or reach the network that a repository, a server or the runner's own
//! environment can switch on: hooks, `core.fsmonitor`, `core.sshCommand`, credential helpers,
//! the `ext::` transport, submodules, redirects, proxies from the environment, the invoking
//! user's `~/.gitconfig`. [`fetch`] runs `/usr/bin/git` so that none of these apply:
//!
//! - **Cleared environment.** Only `PATH=/usr/bin:/bin`, `HOME=<fresh empty 0700 directory>`,
//!   `GIT_CONFIG_NOSYSTEM=1`, `GIT_CONFIG_GLOBAL=/dev/null`, `GIT_TERMINAL_PROMPT=0`,
//!   `GIT_ASKPASS=/bin/false`, `SSH_ASKPASS=/bin/false`, `GIT_ALLOW_PROTOCOL=<the one scheme
//!   of this URL>` and `LC_ALL=C`. No `SSH_AUTH_SOCK`, no proxy variables, no `GIT_*`
//!   injection (`GIT_CONFIG_PARAMETERS`, `GIT_SSH_COMMAND`, `GIT_DIR` ...), no
//!   `/etc/gitconfig`, no `~/.gitconfig` of the runner (as root: `/root/.gitconfig`). Git
//!   therefore cannot see the runner's keys, state or credentials through its configuration.
//! - **Fixed configuration on the command line** (`-c`, which git counts as protected):
//!   `core.hooksPath=/dev/null` (no hook can run), `credential.helper=` (none),
//!   `core.sshCommand=/bin/false`, `core.fsmonitor=false`, `submodule.recurse=false`,
//!   `protocol.allow=never` plus `protocol.<scheme>.allow=always` for this URL's scheme only
//!   (so `ext::`, `ssh`, `git://` and `fd::` are off, and a `file://` fetch is allowed only
//!   after `fetch.file_roots` admitted it), `protocol.ext.allow=never`,
//!   `http.followRedirects=false` (also stops dumb-HTTP alternates), `http.curloptResolve`
//!   pinning the host to the addresses checked below, `fetch.fsckObjects=true` (malformed
//!   objects, `.git`-like paths and `.gitmodules` tricks are refused while fetching),
//!   `core.protectNTFS`/`core.protectHFS`, `gc.auto=0` and `maintenance.auto=false` (nothing
//!   is left running in the background), and `safe.directory=<dest>` for the destination
//!   only. `--no-recurse-submodules` on every fetch and on the checkout.
//! - **Address rules** as for the runner's other fetches ([`crate::tools::address`]): an
//!   `https://`/`http://` host is resolved by the runner, every resolved address must pass
//!   (loopback, private, link-local, CGNAT, multicast, unspecified and this host's own
//!   addresses are refused unless `fetch.allow_private` covers them, a host address only by
//!   an entry naming it; metadata addresses always), and git is then told to
//!   connect to exactly those addresses (`http.curloptResolve`), with redirects off. Git
//!   resolves nothing itself for that host, so a name that re-resolves gains nothing; the
//!   residual risk is a difference between how the `url` crate and libcurl read a URL, which
//!   is why git is handed the `url` crate's normalized serialization, not the text as given.
//!   `file://` URLs and absolute paths are canonicalized and must lie under a canonicalized
//!   `fetch.file_roots` entry; git is handed the canonical path. Every other scheme (`ssh://`,
//!   `git://`, `ext::`, scp-like `host:path`) is refused, and so is any URL with a user name or
//!   password, so no credential is ever printed or recorded.
//! - **Landlock.** Every command is started through `bulwark-sandbox --confine`
//!   ([`GitPolicy::confine_with`], `sandbox/src/confine.rs`), which sets `no_new_privs` and
//!   lets git (and everything it starts) write only beneath the destination, its private HOME
//!   and `/dev/null`, connect only to the repository's TCP port, and signal or reach abstract
//!   sockets only of its own processes. Code running inside git cannot plant files elsewhere
//!   (a file setuid to the job's uid in `/tmp` would outlive the fetch), nor, rootless, touch
//!   the runner's state.
//! - **Who runs it.** As root (`root-per-job-uid`), every git command runs as the job's
//!   leased host uid, with gid equal to it and no supplementary groups (std's
//!   `CommandExt::uid`/`gid`, which call `setgroups(0)` when the parent is root), so a bug in
//!   git's pack or protocol parsing reached by a hostile server gets that uid, not root: it
//!   cannot read the state directory or the signing key. The job is not running yet and the
//!   uid was leased free of processes. For that, the destination and the private HOME (with
//!   the CA bundle) are handed to the uid first; the job directory above lets that uid alone
//!   pass (root's, group the job's gid, 0710). A `file://`
//!   repository must then be readable by the uid: when it is not, the fetch fails saying so
//!   (`find` run as the uid names the first path it cannot read), never retrying as root. Its
//!   owner is checked by the runner (the runner's user, as before) and named to git in
//!   `safe.directory` through a global config file in the private HOME. The runner itself
//!   (root) still measures the destination, rewrites `.git/config` (fd-relative, never
//!   following a link, the old file unlinked first) and hands the tree over later. In
//!   rootless and subuid modes git runs as the runner's own user.
//! - **Time.** One deadline (`fetch.timeout`) covers every git command; git runs in its own
//!   process group, which is killed with SIGKILL when the deadline passes, and also whenever a
//!   command ends, successfully or not (before its leader is reaped, so the group id cannot
//!   have been reused): nothing left in the group outlives the command. Nor does the group
//!   outlive the runner: `--confine` stays as git's supervisor and kills the group when the
//!   runner dies (a cancelled job's run is killed with SIGKILL, mid-fetch perhaps, and then
//!   nobody else would).
//! - **Size.** While git runs (measured at least every 50 ms, less often for a big tree) and
//!   when each command ends, the destination may hold at most `fetch.max_bytes` in files until
//!   the checkout (a pack bomb is stopped while it arrives) and [`EXPANSION_FACTOR`] times that
//!   more from the checkout on (a tree of many copies of one blob, a few kilobytes as a pack,
//!   is stopped while it is written), and at most [`MAX_ENTRIES`] entries (inodes). Past
//!   either, git's process group is killed and the destination emptied.
//! - **Output.** Git's stdout and stderr are pipes drained to their end by the runner, which
//!   keeps the first MiB of stdout and the last 64 KiB of stderr: what a server makes git
//!   print (`remote:` lines without end) costs neither memory nor disk.
//!
//! Fetch strategy: `git init --template=` (no sample hooks), then `git fetch --depth=1 URL
//! COMMIT` — protocol v2 servers, including git's own `upload-pack` for `file://`, allow
//! fetching any reachable commit by id. When the server refuses that (protocol v0 servers
//! without `uploadpack.allowReachableSHA1InWant`), the runner fetches the whole history of
//! `ref` when one is given, or of every branch and tag, and looks for the commit there. The
//! commit must then exist as a commit object, or the fetch fails with `commit <sha> not found
//! in <url>`. `git checkout --detach COMMIT`, then `git rev-parse HEAD` must equal the commit
//! and `git status --porcelain` must be empty. The ref is recorded as given and is not
//! checked: a ref moves, the commit is what is pinned.
//!
//! The `.git` directory is kept so builds that ask git about their source (`git rev-parse
//! HEAD`, `git describe --always`) work. Its `config` is rewritten to a fixed minimal one (no
//! remote, no URL, no hooks path); there is no `FETCH_HEAD`. History is shallow (depth 1) on the
//! fast path and no tags are fetched, so `git describe` without `--always` fails there. Once
//! [`fetch`] returns, the runner runs no git command in the workspace again: the job may
//! rewrite `.git/config`, and only its own git would read it, inside the sandbox.
//!
//! Alternatives rejected: `git clone` (it sets up a remote with the URL in `.git/config`,
//! checks out the default branch first, and for local paths hard-links the source's objects);
//! libgit2/gitoxide in process (a second implementation of the same parsers, in the runner's
//! address space with its keys; git in a child process with nothing to reach is the smaller
//! risk); checking the host name only before running git (git would resolve it again, so
//! a rebinding name would get through; hence the pinning); removing `.git` (builds that embed
//! their commit would break, and the commit is recorded by the runner anyway).
//!
//! Limits: SHA-1 repositories only (the commit is pinned as 40 hex digits). The size bound is
//! measured, not enforced by the kernel: between two measurements git may write past it by
//! what it writes in that interval. Git LFS content is not fetched (the LFS filter is not configured; pointer
//! files are checked out). A `file://` repository owned by another user is refused by git's own
//! ownership check, which the runner keeps on (trusting it would trust that repository's
//! config). A process git starts in a new session (`setsid`) is outside its process group
//! and survives the command, as the job's uid (root mode) outside the job's cgroup; only a
//! compromised git would do that. In root mode the job runner finds it afterwards, refuses the
//! job and kills every process of the uid (`bulwark_sandbox::uid_sweep`); in rootless and
//! subuid modes it is not found.
//!
//! Tested by the unit tests below, against repositories the tests create.

use std::fs;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulwark_protocol::{Config, IpNet};
use reqwest::Url;

mod remote;
use remote::Remote;

use crate::tools::address::{AddressPolicy, AddressRefused};

/// The git binary: a fixed path, never looked up on the runner's `PATH`.
pub const GIT: &str = "/usr/bin/git";

/// `PATH` git runs with (for the helpers it starts, like `git-remote-https`).
const GIT_PATH: &str = "/usr/bin:/bin";

/// Where the system CA bundle may be, to combine with `fetch.extra_ca`.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The `.git/config` left in the workspace: no remote, no URL, no hooks path.
const SANITIZED_CONFIG: &str = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n";

/// Most bytes of git's own output kept for an error message.
const MAX_MESSAGE: usize = 2000;

/// Most bytes of a git command's standard output kept (what is read is a commit id or a short
/// status); the rest is read and discarded.
const MAX_STDOUT: usize = 1 << 20;

/// Most bytes of a git command's standard error kept, from its end; the rest is read and
/// discarded, however much a server makes git print.
const MAX_STDERR: usize = 64 << 10;

/// Most files, directories and links the destination may hold, `.git` included: far above
/// any real repository's checkout, far below what fills a filesystem's inodes.
pub const MAX_ENTRIES: u64 = 1_000_000;

/// How many times `fetch.max_bytes` the checked-out tree may take, as for an unpacked archive.
pub use crate::tools::archive::EXPANSION_FACTOR;

/// Shortest pause between two measurements of the destination while git runs; a measurement
/// that took longer is followed by a pause ten times as long, so measuring a big tree stays
/// a small part of the work.
const MIN_MEASURE_INTERVAL: Duration = Duration::from_millis(50);

/// What the runner's git may fetch from, built from `[fetch]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitPolicy {
    /// Non-public networks git may connect to (`fetch.allow_private`); metadata never.
    pub allow_private: Vec<IpNet>,
    /// Addresses of this host beside its interfaces' (`host.addresses`), refused as the
    /// interfaces' are unless `allow_private` names them exactly (a /32 or /128 entry).
    pub host_addresses: Vec<std::net::IpAddr>,
    /// Directories `file://` URLs and absolute paths may point into; empty: none.
    pub file_roots: Vec<PathBuf>,
    /// Longest the whole fetch (every git command together) may take.
    pub timeout: Duration,
    /// Most bytes what git fetches may take on disk (`fetch.max_bytes`); the checked-out tree
    /// may take [`EXPANSION_FACTOR`] times this on top.
    pub max_bytes: u64,
    /// A PEM bundle trusted for `https://` in addition to the system roots (`fetch.extra_ca`).
    pub extra_ca: Option<PathBuf>,
    /// What the destination may take before its filesystem falls below
    /// `limits.min_free_disk` (set by the job): bytes, and entries beside [`MAX_ENTRIES`].
    pub room: crate::disk_reserve::Room,
    /// The sandbox helper every git command is run through, confined (`bulwark-sandbox
    /// --confine`: Landlock writes only to the destination and git's HOME, TCP connects only
    /// to the repository's port, no_new_privs); set by the job runner to
    /// [`crate::helper_process::HelperBinary::exec_path`]. `None` only in unit tests that
    /// exercise git's configuration alone.
    pub confine_with: Option<PathBuf>,
}

impl GitPolicy {
    /// The policy `[fetch]` and `[host]` describe; an `allow_private` entry that does not
    /// parse is an error.
    pub fn from_config(config: &Config) -> Result<GitPolicy, String> {
        let fetch = &config.fetch;
        let allow_private = fetch
            .allow_private
            .iter()
            .map(|entry| IpNet::parse(entry).map_err(|e| format!("fetch.allow_private: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(GitPolicy {
            allow_private,
            host_addresses: config.host.addresses.clone(),
            file_roots: fetch.file_roots.iter().map(PathBuf::from).collect(),
            timeout: fetch.timeout,
            max_bytes: fetch.max_bytes,
            extra_ca: (!fetch.extra_ca.is_empty()).then(|| PathBuf::from(&fetch.extra_ca)),
            room: crate::disk_reserve::Room::default(),
            confine_with: None,
        })
    }
}

/// A source fetched and verified by [`fetch`]: what `result.json` and provenance record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSource {
    /// The repository URL exactly as the job spec gave it (it holds no credentials).
    pub uri: String,
    /// The full commit id that is checked out (40 lowercase hex).
    pub commit: String,
    /// The ref as the job spec gave it, not verified.
    pub r#ref: Option<String>,
}

impl GitSource {
    /// The `inputs.source` object of `result.json`, as provenance reads it:
    /// `{"kind": "git", "uri": ..., "commit": ..., "ref": ... | null}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "git",
            "uri": self.uri,
            "commit": self.commit,
            "ref": self.r#ref,
        })
    }
}

/// Why a git source could not be fetched. The URL shown is the one given (never with
/// credentials: those are refused before anything runs).
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// Not a URL git may be given.
    #[error("git source {url:?}: not a usable URL; use https://, http:// or file://")]
    BadUrl {
        /// The text given, quoted when shown.
        url: String,
    },
    /// A scheme other than https, http, file.
    #[error("git source {url}: scheme {scheme:?} refused; use https, http or file (ssh, git://, ext:: and other transports are off)")]
    Scheme {
        /// The URL.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// The URL carries a user name or password; the URL itself is not shown.
    #[error(
        "git source URLs with a user name or password are refused; use a URL without credentials"
    )]
    Credentials,
    /// This host's own addresses could not be listed, so no address can be judged.
    #[error("git source {url}: {reason}")]
    HostAddresses {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The host name did not resolve.
    #[error("git source {url}: cannot resolve {host}")]
    Resolve {
        /// The URL.
        url: String,
        /// The host name.
        host: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// An address the host resolved to is refused.
    #[error("git source {url}")]
    Address {
        /// The URL.
        url: String,
        /// Which address and why.
        #[source]
        source: AddressRefused,
    },
    /// A `file://` URL or path that `fetch.file_roots` does not cover.
    #[error("git source {url}: {} is not under fetch.file_roots{hint}", path.display(), hint = if *.empty { " (which is empty: file:// sources are off)" } else { "" })]
    FileOutsideRoots {
        /// The URL.
        url: String,
        /// The path it names (canonical when it exists).
        path: PathBuf,
        /// Whether `fetch.file_roots` is empty.
        empty: bool,
    },
    /// A `file://` path that is not exactly a repository.
    #[error("git source {url}: {} {why}; name the repository itself (its work tree with a .git directory, or a bare repository)", path.display())]
    NotRepository {
        /// The URL.
        url: String,
        /// The path judged.
        path: PathBuf,
        /// Why it is not one.
        why: &'static str,
    },
    /// A host name that git could not be pinned to the checked addresses of.
    #[error("git source {url}: host name {host:?} refused: only letters, digits, '-' and '_' in dot-separated labels, none starting with '-'")]
    HostName {
        /// The URL.
        url: String,
        /// The host name.
        host: String,
    },
    /// A `file://` path that cannot be canonicalized.
    #[error("git source {url}: {}", path.display())]
    File {
        /// The URL.
        url: String,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The commit is not a full commit id.
    #[error(
        "git source: commit {commit:?} is not a full commit id; pin all 40 lowercase hex digits"
    )]
    BadCommit {
        /// What was given.
        commit: String,
    },
    /// The ref could be read as an option or a range.
    #[error("git source: {ref_name:?} is not a valid git ref, like refs/heads/main")]
    BadRef {
        /// What was given.
        ref_name: String,
    },
    /// The destination is not an empty directory.
    #[error("git source: destination {}: {reason}", path.display())]
    Dest {
        /// The destination.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// A file operation of the runner's own failed (private HOME, destination, CA bundle).
    #[error("git source: {what} {}", path.display())]
    Io {
        /// What the runner was doing, like `creating git's private HOME`.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// `/usr/bin/git` could not be started.
    #[error("git source: cannot run {GIT}; install git on the runner host")]
    Spawn(#[source] io::Error),
    /// A git command failed; `output` is git's own message, sanitized and shortened.
    #[error("git source {url}: git {step} failed ({status}): {output}{hint}", hint = ownership_hint(output))]
    Git {
        /// The URL.
        url: String,
        /// The step, like `fetch`.
        step: &'static str,
        /// How git ended.
        status: String,
        /// What git said.
        output: String,
    },
    /// The commit is not in the repository.
    #[error("commit {commit} not found in {url}{}", ref_name.as_ref().map(|r| format!(" (fetched {r}; check the commit and the ref)")).unwrap_or_else(|| " (fetched every branch and tag; check the commit id)".into()))]
    CommitNotFound {
        /// The URL.
        url: String,
        /// The commit asked for.
        commit: String,
        /// The ref fetched in the fallback, if one was given.
        ref_name: Option<String>,
    },
    /// The whole fetch took longer than `fetch.timeout`; git was killed.
    #[error("git source {url}: timed out after {} (fetch.timeout) during git {step}", humantime::format_duration(*.timeout))]
    Timeout {
        /// The URL.
        url: String,
        /// The step running when time ran out.
        step: &'static str,
        /// The limit.
        timeout: Duration,
    },
    /// After checkout, HEAD is not the pinned commit.
    #[error("git source {url}: checkout does not match: HEAD is {actual}, expected {expected}")]
    Mismatch {
        /// The URL.
        url: String,
        /// The commit asked for.
        expected: String,
        /// What HEAD is.
        actual: String,
    },
    /// The destination grew past its bound while git ran; git was killed.
    #[error("git source {url}: git {step} stopped: the repository takes more than {limit}")]
    TooLarge {
        /// The URL.
        url: String,
        /// The step running when the bound was passed.
        step: &'static str,
        /// The bound passed and what to do, like `9.0 MiB on disk (...)`.
        limit: String,
    },
    /// Root mode: a local repository (or its `.git`) not owned by the runner's user.
    #[error("git source {url}: {} is not a directory owned by the runner's user; make the repository owned by the runner's user (a repository of another user is not trusted)", path.display())]
    FileOwner {
        /// The URL.
        url: String,
        /// The repository or its `.git`.
        path: PathBuf,
    },
    /// A local repository that git, running as the job's uid, cannot read.
    #[error("git source {url}: the job's uid {uid} cannot read {} (git runs as the job's uid, never as root); make the repository and the directories above it readable to every job uid (for example `chmod -R a+rX` on it, and a+x on its parents), or serve it over https", path.display())]
    FileUnreadable {
        /// The URL.
        url: String,
        /// The first path the job's uid cannot read (or pass through).
        path: PathBuf,
        /// The job's uid.
        uid: u32,
    },
    /// After checkout, the work tree differs from the commit.
    #[error("git source {url}: checkout of {commit} is not clean: {status}")]
    Dirty {
        /// The URL.
        url: String,
        /// The commit.
        commit: String,
        /// The start of `git status --porcelain`.
        status: String,
    },
}

fn ownership_hint(output: &str) -> &'static str {
    if output.contains("dubious ownership") {
        " (the runner keeps git's ownership check on: make the repository owned by the runner's user)"
    } else {
        ""
    }
}

/// Fetches `url` at exactly `commit` into the empty directory `dest` (the job's workspace), with
/// git confined as the module docs describe; verifies HEAD and a clean tree; keeps a sanitized
/// `.git`. On any error `dest` is emptied again.
///
/// `job_uid` (root mode: the job's leased host uid) is the uid, and the gid, every git command
/// runs as, with no supplementary groups; `dest` is handed to it first and everything in it
/// then belongs to it. `None` (rootless and subuid modes): git runs as the runner's own user
/// and the files belong to that user.
pub fn fetch(
    url: &str,
    commit: &str,
    r#ref: Option<&str>,
    dest: &Path,
    policy: &GitPolicy,
    job_uid: Option<u32>,
) -> Result<GitSource, GitError> {
    fetch_with(url, commit, r#ref, dest, policy, job_uid, ById::Try)
}

/// Whether to try fetching the commit by id first (tests turn it off to reach the fallback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ById {
    Try,
    #[cfg(test)]
    Skip,
}

fn fetch_with(
    url: &str,
    commit: &str,
    r#ref: Option<&str>,
    dest: &Path,
    policy: &GitPolicy,
    job_uid: Option<u32>,
    by_id: ById,
) -> Result<GitSource, GitError> {
    let deadline = Instant::now() + policy.timeout;
    check_commit(commit)?;
    if let Some(ref_name) = r#ref {
        check_ref(ref_name)?;
    }
    let remote = Remote::check(url, policy)?;
    let dest = check_dest(dest)?;
    if let Some(uid) = job_uid {
        // Git, running as the job's uid, creates everything in here; the directory above
        // (the job directory, 0710 with the job's gid as its group) only lets it pass.
        std::os::unix::fs::lchown(&dest, Some(uid), Some(uid)).map_err(|source| GitError::Io {
            what: "handing to the job's uid the destination",
            path: dest.clone(),
            source,
        })?;
    }
    let home = PrivateHome::create()?;
    let git = Git::new(&remote, &dest, &home, policy, job_uid, deadline)?;
    let result =
        fetch_into(&git, &remote, commit, r#ref, &dest, by_id).map_err(|e| git.explain(e, &remote));
    let result = result.and_then(|()| write_sanitized_config(&dest, job_uid));
    if result.is_err() {
        empty_dir(&dest);
    }
    result.map(|()| GitSource {
        uri: url.to_owned(),
        commit: commit.to_owned(),
        r#ref: r#ref.map(str::to_owned),
    })
}

/// The steps of [`fetch`] after every check passed.
fn fetch_into(
    git: &Git,
    remote: &Remote,
    commit: &str,
    ref_name: Option<&str>,
    dest: &Path,
    by_id: ById,
) -> Result<(), GitError> {
    let dest_arg = dest.to_string_lossy();
    git.run(
        "init",
        &["init", "--quiet", "--template=", &dest_arg],
        false,
        git.max_bytes,
    )?;
    let fetch_base = [
        "fetch",
        "--quiet",
        "--no-tags",
        "--no-recurse-submodules",
        "--no-write-fetch-head",
    ];
    // Fast path: the commit by id, one level deep. Fallback: the ref's (or every branch's and
    // tag's) whole history, in which the commit is then looked for.
    let mut fetch_base = fetch_base.to_vec();
    // A local repository is read exactly where `Remote::local` found it: without `--strict`,
    // `upload-pack` would try other directories beside the one named.
    if remote.scheme == "file" {
        fetch_base.push("--upload-pack=git-upload-pack --strict");
    }
    let mut args = fetch_base.clone();
    args.extend(["--depth=1", "--end-of-options", &remote.git_arg, commit]);
    let fast = match by_id {
        ById::Try => git.run("fetch", &args, true, git.max_bytes).map(drop),
        #[cfg(test)]
        ById::Skip => Err(GitError::BadCommit {
            commit: commit.to_owned(),
        }),
    };
    match fast {
        Ok(()) => {}
        // Neither gets better by fetching more.
        Err(e @ (GitError::Timeout { .. } | GitError::TooLarge { .. })) => return Err(e),
        Err(e) => {
            tracing::debug!(error = %e, "fetching the commit by id failed; fetching refs");
            let refspecs: Vec<String> = match ref_name {
                Some(r) => vec![format!("+{r}:refs/bulwark/ref")],
                None => vec![
                    "+refs/heads/*:refs/remotes/origin/*".into(),
                    "+refs/tags/*:refs/tags/*".into(),
                ],
            };
            let mut args = fetch_base.clone();
            args.extend(["--end-of-options", &remote.git_arg]);
            args.extend(refspecs.iter().map(String::as_str));
            git.run("fetch", &args, true, git.max_bytes)?;
        }
    }
    let object = format!("{commit}^{{commit}}");
    let found = git
        .run(
            "rev-parse",
            &[
                "rev-parse",
                "--quiet",
                "--verify",
                "--end-of-options",
                &object,
            ],
            true,
            git.max_bytes,
        )
        .ok();
    if found.as_deref().map(str::trim) != Some(commit) {
        return Err(GitError::CommitNotFound {
            url: remote.display.clone(),
            commit: commit.to_owned(),
            ref_name: ref_name.map(str::to_owned),
        });
    }
    git.run(
        "checkout",
        &[
            "checkout",
            "--quiet",
            "--detach",
            "--no-recurse-submodules",
            commit,
            "--",
        ],
        true,
        git.tree_bytes(),
    )?;
    let head = git.run(
        "rev-parse",
        &["rev-parse", "--verify", "HEAD"],
        true,
        git.tree_bytes(),
    )?;
    if head.trim() != commit {
        return Err(GitError::Mismatch {
            url: remote.display.clone(),
            expected: commit.to_owned(),
            actual: clean_message(head.trim()),
        });
    }
    let status = git.run(
        "status",
        &[
            "status",
            "--porcelain=v1",
            "--untracked-files=all",
            "--ignore-submodules=none",
        ],
        true,
        git.tree_bytes(),
    )?;
    if !status.trim().is_empty() {
        return Err(GitError::Dirty {
            url: remote.display.clone(),
            commit: commit.to_owned(),
            status: clean_message(&status),
        });
    }
    Ok(())
}

/// Replaces `dest/.git/config` with [`SANITIZED_CONFIG`], owned by `owner` when given.
///
/// The runner may be root and the tree was written by git as the job's uid, so nothing in it
/// is followed: `dest` and `.git` are opened without following a symlink, the old `config` is
/// unlinked and a new one created with `O_EXCL | O_NOFOLLOW` (a symlink or a hard link git left
/// there to a file elsewhere is removed, never written through).
fn write_sanitized_config(dest: &Path, owner: Option<u32>) -> Result<(), GitError> {
    use nix::fcntl::{open, openat, OFlag};
    use nix::sys::stat::Mode;
    use nix::unistd::{fchown, unlinkat, Gid, Uid, UnlinkatFlags};
    let config = dest.join(".git/config");
    let io_error = |e: nix::Error| GitError::Io {
        what: "rewriting",
        path: config.clone(),
        source: e.into(),
    };
    let dir = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let dest_fd = open(dest, dir, Mode::empty()).map_err(io_error)?;
    let git_fd = openat(&dest_fd, ".git", dir, Mode::empty()).map_err(io_error)?;
    match unlinkat(&git_fd, "config", UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(io_error(e)),
    }
    let fd = openat(
        &git_fd,
        "config",
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .map_err(io_error)?;
    if let Some(uid) = owner {
        fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(uid))).map_err(io_error)?;
    }
    let mut file = fs::File::from(fd);
    io::Write::write_all(&mut file, SANITIZED_CONFIG.as_bytes()).map_err(|source| GitError::Io {
        what: "rewriting",
        path: config.clone(),
        source,
    })
}

fn check_commit(commit: &str) -> Result<(), GitError> {
    let hex = commit
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if hex && commit.len() == 40 {
        Ok(())
    } else {
        Err(GitError::BadCommit {
            commit: commit.to_owned(),
        })
    }
}

/// The job spec's rule, again, so a caller that skipped validation cannot pass an option.
fn check_ref(ref_name: &str) -> Result<(), GitError> {
    let bad = ref_name.is_empty()
        || ref_name.len() > 255
        || ref_name.starts_with('-')
        || ref_name.contains("..")
        || ref_name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c));
    if bad {
        Err(GitError::BadRef {
            ref_name: ref_name.to_owned(),
        })
    } else {
        Ok(())
    }
}

/// `dest` must be an existing empty directory (not a symlink); returns it canonicalized.
fn check_dest(dest: &Path) -> Result<PathBuf, GitError> {
    let io_error = |source| GitError::Io {
        what: "reading the destination",
        path: dest.to_owned(),
        source,
    };
    let meta = fs::symlink_metadata(dest).map_err(io_error)?;
    if !meta.is_dir() {
        return Err(GitError::Dest {
            path: dest.to_owned(),
            reason: "is not a directory (it must be an existing, empty directory)",
        });
    }
    if fs::read_dir(dest).map_err(io_error)?.next().is_some() {
        return Err(GitError::Dest {
            path: dest.to_owned(),
            reason: "is not empty",
        });
    }
    let canonical = dest.canonicalize().map_err(io_error)?;
    if canonical.to_str().is_none() {
        return Err(GitError::Dest {
            path: dest.to_owned(),
            reason: "is not a UTF-8 path",
        });
    }
    Ok(canonical)
}

/// Removes everything inside `dest`, keeping `dest` itself; failures are logged.
fn empty_dir(dest: &Path) {
    let Ok(entries) = fs::read_dir(dest) else {
        return;
    };
    for entry in entries.flatten() {
        if let Err(e) = crate::fsutil::remove_tree(&entry.path()) {
            tracing::warn!(path = %entry.path().display(), error = %e, "cannot clean up a failed git fetch");
        }
    }
}

/// A fresh, empty, 0700 directory that git uses as HOME; removed on drop.
#[derive(Debug)]
struct PrivateHome(PathBuf);

impl PrivateHome {
    fn create() -> Result<PrivateHome, GitError> {
        let path =
            std::env::temp_dir().join(format!("bulwark-git-{}", crate::fsutil::random_hex(12)));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| GitError::Io {
                what: "creating git's private HOME",
                path: path.clone(),
                source,
            })?;
        Ok(PrivateHome(path))
    }
}

impl PrivateHome {
    /// Hands the directory and what the runner wrote into it (the CA bundle, the global
    /// configuration) to the job's uid, which git runs as.
    fn hand_to(&self, uid: u32) -> Result<(), GitError> {
        let chown = |path: &Path| {
            std::os::unix::fs::lchown(path, Some(uid), Some(uid)).map_err(|source| GitError::Io {
                what: "handing git's private HOME to the job's uid",
                path: path.to_owned(),
                source,
            })
        };
        let entries = fs::read_dir(&self.0).map_err(|source| GitError::Io {
            what: "reading git's private HOME",
            path: self.0.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            chown(&entry.path())?;
        }
        chown(&self.0)
    }
}

impl Drop for PrivateHome {
    fn drop(&mut self) {
        let _ = crate::fsutil::remove_tree(&self.0);
    }
}

/// How to run confined git for one fetch.
#[derive(Debug)]
struct Git<'a> {
    url: &'a str,
    home: &'a Path,
    /// The job's uid (and gid) git runs as, or `None` for the runner's own user.
    uid: Option<u32>,
    git_dir: String,
    work_tree: String,
    env: Vec<(&'static str, String)>,
    config: Vec<String>,
    /// The sandbox helper and its `--confine ... --` arguments, put before every program.
    confine: Option<(PathBuf, Vec<String>)>,
    deadline: Instant,
    timeout: Duration,
    /// `fetch.max_bytes`: the most the destination may hold until the checkout.
    max_bytes: u64,
    /// The room above the disk reserve: the most the destination may ever hold.
    room: Option<u64>,
    /// The most entries it may hold: [`MAX_ENTRIES`], or fewer inodes left above the reserve.
    max_entries: u64,
}

impl<'a> Git<'a> {
    fn new(
        remote: &'a Remote,
        dest: &Path,
        home: &'a PrivateHome,
        policy: &GitPolicy,
        uid: Option<u32>,
        deadline: Instant,
    ) -> Result<Git<'a>, GitError> {
        let dest_str = dest.to_string_lossy().into_owned();
        let global = match uid {
            Some(_) => safe_source_config(remote, &home.0)?,
            None => None,
        };
        let env = vec![
            ("PATH", GIT_PATH.to_owned()),
            ("HOME", home.0.to_string_lossy().into_owned()),
            ("GIT_CONFIG_NOSYSTEM", "1".to_owned()),
            (
                "GIT_CONFIG_GLOBAL",
                global.map_or_else(|| "/dev/null".to_owned(), |p| p.to_string_lossy().into()),
            ),
            ("GIT_TERMINAL_PROMPT", "0".to_owned()),
            ("GIT_ASKPASS", "/bin/false".to_owned()),
            ("SSH_ASKPASS", "/bin/false".to_owned()),
            ("GIT_ALLOW_PROTOCOL", remote.scheme.to_owned()),
            ("LC_ALL", "C".to_owned()),
        ];
        let mut config: Vec<String> = [
            "core.hooksPath=/dev/null",
            "credential.helper=",
            "core.sshCommand=/bin/false",
            "core.fsmonitor=false",
            "submodule.recurse=false",
            "protocol.allow=never",
            "protocol.ext.allow=never",
            "http.followRedirects=false",
            "fetch.fsckObjects=true",
            "core.protectNTFS=true",
            "core.protectHFS=true",
            "gc.auto=0",
            "maintenance.auto=false",
            "init.defaultBranch=bulwark",
            "advice.detachedHead=false",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        config.push(format!("protocol.{}.allow=always", remote.scheme));
        config.push(format!("safe.directory={dest_str}"));
        if let Some(pin) = &remote.pin {
            config.push(format!("http.curloptResolve={pin}"));
        }
        if let Some(extra) = &policy.extra_ca {
            let bundle = ca_bundle(extra, &home.0)?;
            config.push(format!("http.sslCAInfo={}", bundle.display()));
        }
        if let Some(uid) = uid {
            home.hand_to(uid)?;
        }
        let confine = policy.confine_with.clone().map(|helper| {
            let mut args: Vec<String> = vec![
                "--confine".into(),
                "--parent".into(),
                std::process::id().to_string(),
            ];
            for dir in [&dest_str, &*home.0.to_string_lossy()] {
                args.extend(["--write".into(), dir.to_owned()]);
            }
            if let Some(port) = remote.port {
                args.extend(["--connect".into(), port.to_string()]);
            }
            args.push("--".into());
            (helper, args)
        });
        Ok(Git {
            confine,
            url: &remote.display,
            home: &home.0,
            uid,
            git_dir: format!("{dest_str}/.git"),
            work_tree: dest_str,
            env,
            config,
            deadline,
            timeout: policy.timeout,
            max_bytes: policy.max_bytes,
            room: policy.room.bytes,
            max_entries: policy
                .room
                .entries
                .map_or(MAX_ENTRIES, |e| e.min(MAX_ENTRIES)),
        })
    }

    /// The most the destination may hold from the checkout on: what was fetched, and
    /// [`EXPANSION_FACTOR`] times `fetch.max_bytes` more for the checked-out tree.
    fn tree_bytes(&self) -> u64 {
        self.max_bytes.saturating_mul(1 + EXPANSION_FACTOR)
    }

    /// `program` with the confined setup every child of the fetch gets: the cleared
    /// environment, git's private HOME as working directory, stdin from `/dev/null`, stdout
    /// and stderr piped, its own process group, and (root mode) the job's uid and gid.
    ///
    /// With a uid set and no groups, std calls `setgroups(0)` in the child when the runner is
    /// root, so no supplementary group (root's `root`, or any other) survives; a unit test
    /// reads a child's `/proc/self/status` to prove it.
    fn command(&self, program: &str) -> Command {
        let mut cmd = match &self.confine {
            Some((helper, args)) => {
                let mut cmd = Command::new(helper);
                cmd.arg0(bulwark_sandbox::helper::HELPER_BINARY)
                    .args(args)
                    .arg(program);
                cmd
            }
            None => Command::new(program),
        };
        cmd.env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.home)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(uid) = self.uid {
            cmd.uid(uid).gid(uid);
        }
        cmd
    }

    /// Runs one git command; returns its stdout. `in_repo` adds `--git-dir`/`--work-tree`.
    /// While it runs, and once more when it ends, the destination may hold at most `max_bytes`
    /// in files and [`MAX_ENTRIES`] entries; past either, git's process group is killed.
    fn run(
        &self,
        step: &'static str,
        args: &[&str],
        in_repo: bool,
        max_bytes: u64,
    ) -> Result<String, GitError> {
        let mut cmd = self.command(GIT);
        for c in &self.config {
            cmd.arg("-c").arg(c);
        }
        if in_repo {
            cmd.arg(format!("--git-dir={}", self.git_dir))
                .arg(format!("--work-tree={}", self.work_tree));
        }
        cmd.args(args);
        let (status, stdout, stderr) = self.wait_for(step, cmd, max_bytes)?;
        if status.success() {
            return Ok(stdout);
        }
        Err(GitError::Git {
            url: self.url.to_owned(),
            step,
            status: match status.code() {
                Some(code) => format!("exit status {code}"),
                None => "killed by a signal".to_owned(),
            },
            output: clean_message(&stderr),
        })
    }

    /// Spawns `cmd` and waits for it within the deadline and the size bounds; returns how it
    /// ended, its stdout (the first [`MAX_STDOUT`] bytes) and stderr (the last [`MAX_STDERR`]).
    /// Whatever else of its process group is left when it ends is killed: nothing a command
    /// started outlives it.
    fn wait_for(
        &self,
        step: &'static str,
        mut cmd: Command,
        max_bytes: u64,
    ) -> Result<(std::process::ExitStatus, String, String), GitError> {
        let timed_out = || GitError::Timeout {
            url: self.url.to_owned(),
            step,
            timeout: self.timeout,
        };
        if Instant::now() >= self.deadline {
            return Err(timed_out());
        }
        let mut child = cmd.spawn().map_err(GitError::Spawn)?;
        // Both pipes are drained to their end by threads that keep a bounded part, so git never
        // blocks on a full pipe and what a server makes it print costs no memory or disk.
        let stdout = child
            .stdout
            .take()
            .map(|pipe| std::thread::spawn(move || read_bounded(pipe, MAX_STDOUT, Keep::Head)));
        let stderr = child
            .stderr
            .take()
            .map(|pipe| std::thread::spawn(move || read_bounded(pipe, MAX_STDERR, Keep::Tail)));
        // The leader is never reaped before its group is killed: while it is unreaped (a
        // zombie at worst) its pid, and so the group id, cannot name anything else.
        let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
        let kill_group = || {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        };
        let kill = |child: &mut std::process::Child| {
            kill_group();
            let _ = child.wait();
        };
        let mut next_measure = Instant::now();
        loop {
            match exited(pgid) {
                Ok(true) => break,
                Ok(false) if Instant::now() >= self.deadline => {
                    kill(&mut child);
                    return Err(timed_out());
                }
                Ok(false) if Instant::now() >= next_measure => {
                    let started = Instant::now();
                    if let Err(e) = self.check_size(step, max_bytes) {
                        kill(&mut child);
                        return Err(e);
                    }
                    next_measure =
                        Instant::now() + (started.elapsed() * 10).max(MIN_MEASURE_INTERVAL);
                }
                Ok(false) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => {
                    kill(&mut child);
                    return Err(GitError::Spawn(e));
                }
            }
        }
        // The command ended: whatever it left in its process group goes with it, before the
        // leader is reaped.
        kill_group();
        let status = child.wait().map_err(GitError::Spawn)?;
        // A process git left behind in another process group could hold a pipe open: wait for
        // the readers only until the deadline, and leave them behind after it.
        while ![&stdout, &stderr]
            .iter()
            .all(|r| r.as_ref().is_none_or(|r| r.is_finished()))
        {
            if Instant::now() >= self.deadline {
                return Err(timed_out());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let joined = |reader: Option<std::thread::JoinHandle<String>>| {
            reader.and_then(|r| r.join().ok()).unwrap_or_default()
        };
        let (stdout, stderr) = (joined(stdout), joined(stderr));
        self.check_size(step, max_bytes)?;
        Ok((status, stdout, stderr))
    }

    /// A git failure on a local repository, explained when the job's uid cannot read the
    /// repository: git's own messages for that vary (`does not appear to be a git
    /// repository`, `Permission denied`, `is corrupt`), so `find`, run as the same uid,
    /// names the first path it cannot read or pass through.
    fn explain(&self, error: GitError, remote: &Remote) -> GitError {
        let (Some(uid), "file", GitError::Git { .. } | GitError::CommitNotFound { .. }) =
            (self.uid, remote.scheme, &error)
        else {
            return error;
        };
        let mut cmd = self.command("/usr/bin/find");
        cmd.args(["-P", &remote.git_arg])
            .args([
                "(",
                "-type",
                "d",
                "(",
                "!",
                "-readable",
                "-o",
                "!",
                "-executable",
                ")",
            ])
            .args([
                "-o",
                "!",
                "-type",
                "l",
                "!",
                "-readable",
                ")",
                "-print",
                "-quit",
            ]);
        let Ok((status, stdout, _)) = self.wait_for("find", cmd, self.max_bytes) else {
            return error;
        };
        let path = match stdout.lines().next() {
            Some(first) => PathBuf::from(first),
            // Not even the repository's own path could be reached.
            None if !status.success() => PathBuf::from(&remote.git_arg),
            None => return error,
        };
        GitError::FileUnreadable {
            url: self.url.to_owned(),
            path,
            uid,
        }
    }

    /// Refuses a destination holding more than `max_bytes` in files or [`MAX_ENTRIES`]
    /// entries.
    fn check_size(&self, step: &'static str, max_bytes: u64) -> Result<(), GitError> {
        let too_large = |limit: String| GitError::TooLarge {
            url: self.url.to_owned(),
            step,
            limit,
        };
        let room = self.room.filter(|r| *r < max_bytes);
        let bound = room.unwrap_or(max_bytes);
        match measure(Path::new(&self.work_tree), bound, self.max_entries) {
            Usage::Within => Ok(()),
            Usage::Bytes if room.is_some() => Err(too_large(format!(
                "{} on disk, the space left above limits.min_free_disk on its filesystem; free \
                 space there",
                bulwark_protocol::format_size(bound)
            ))),
            Usage::Bytes => Err(too_large(if max_bytes == self.max_bytes {
                format!(
                    "{} on disk (fetch.max_bytes); raise fetch.max_bytes if this repository \
                     is expected to be that large",
                    bulwark_protocol::format_size(max_bytes)
                )
            } else {
                format!(
                    "{} on disk ({} times fetch.max_bytes); raise fetch.max_bytes if this \
                     repository is expected to be that large",
                    bulwark_protocol::format_size(max_bytes),
                    1 + EXPANSION_FACTOR
                )
            })),
            Usage::Entries if self.max_entries < MAX_ENTRIES => Err(too_large(format!(
                "{} files and directories, the inodes left above limits.min_free_disk on its \
                 filesystem; free some there",
                self.max_entries
            ))),
            Usage::Entries => Err(too_large(format!("{MAX_ENTRIES} files and directories"))),
        }
    }
}

/// Whether the child `pid` has ended, without reaping it (`WNOWAIT`).
fn exited(pid: nix::unistd::Pid) -> io::Result<bool> {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    match waitid(
        Id::Pid(pid),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
    ) {
        Ok(WaitStatus::StillAlive) => Ok(false),
        Ok(_) => Ok(true),
        Err(nix::Error::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Root mode, a local repository: `home/gitconfig` naming it in `safe.directory`, for
/// `GIT_CONFIG_GLOBAL`; `None` for other schemes.
///
/// Git running as the job's uid would find the repository "dubiously owned" (not its own).
/// The runner keeps the rule it had when git ran as the runner's user: a repository owned by
/// the runner's user is trusted, and any other is refused, here, since git's own check would
/// now trust one owned by the job's uid. The entry goes into the global file, not `-c`,
/// because git drops `-c` settings for the `upload-pack` it runs on a local repository.
fn safe_source_config(remote: &Remote, home: &Path) -> Result<Option<PathBuf>, GitError> {
    use std::os::unix::fs::MetadataExt;
    if remote.scheme != "file" {
        return Ok(None);
    }
    let me = nix::unistd::geteuid().as_raw();
    let repo = Path::new(&remote.git_arg);
    let owned = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir() && m.uid() == me);
    // A `.git` that is not a directory (a gitfile naming a repository elsewhere) is refused.
    let dot_git = repo.join(".git");
    let not_owned = [repo, &dot_git]
        .into_iter()
        .find(|p| !owned(p) && (*p == repo || fs::symlink_metadata(p).is_ok()));
    if let Some(path) = not_owned {
        return Err(GitError::FileOwner {
            url: remote.display.clone(),
            path: path.to_owned(),
        });
    }
    // Quoted in the file below; a path that would need escaping is not worth the risk.
    if remote
        .git_arg
        .chars()
        .any(|c| c.is_control() || c == '"' || c == '\\')
    {
        return Err(GitError::BadUrl {
            url: remote.display.clone(),
        });
    }
    let path = home.join("gitconfig");
    let text = format!(
        "[safe]\n\tdirectory = \"{0}\"\n\tdirectory = \"{0}/.git\"\n",
        remote.git_arg
    );
    fs::write(&path, text).map_err(|source| GitError::Io {
        what: "writing git's global configuration",
        path: path.clone(),
        source,
    })?;
    Ok(Some(path))
}

/// Whether a tree stayed within its bounds, or which one it passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Usage {
    Within,
    Bytes,
    Entries,
}

/// Measures the regular files' sizes and the entries under `dir`, stopping at the first bound
/// passed. Symlinks are never followed, not even one swapped in for a directory between its
/// listing and its walk (each directory is opened beneath `dir` with `openat2` refusing any
/// symlink on the way); entries that vanish meanwhile (git's temporary files) are skipped.
/// Iterative, one directory open at a time, so a deep tree exhausts neither the stack nor the
/// descriptors.
fn measure(dir: &Path, max_bytes: u64, max_entries: u64) -> Usage {
    use nix::fcntl::{openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
    use std::os::unix::ffi::OsStrExt;
    // Git (as the job's uid, in root mode) writes this tree while root measures it: each
    // directory is opened from the destination's descriptor with no symlink anywhere on the
    // way and never above it, so a directory swapped for a symlink leads the walk nowhere.
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let Ok(root) = nix::fcntl::open(dir, flags, nix::sys::stat::Mode::empty()) else {
        return Usage::Within;
    };
    let how = OpenHow::new().flags(flags).resolve(
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS
            | ResolveFlag::RESOLVE_NO_XDEV,
    );
    let (mut bytes, mut entries) = (0u64, 0u64);
    let mut dirs = vec![PathBuf::from(".")];
    while let Some(rel) = dirs.pop() {
        let Ok(fd) = openat2(&root, rel.as_path(), how) else {
            continue;
        };
        // The listing takes a descriptor of its own; `fd` stays for the stat calls.
        let Ok(mut listing) = nix::fcntl::openat(&fd, ".", flags, nix::sys::stat::Mode::empty())
            .and_then(nix::dir::Dir::from_fd)
        else {
            continue;
        };
        for entry in listing.iter().flatten() {
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            entries += 1;
            if entries > max_entries {
                return Usage::Entries;
            }
            let name = std::ffi::OsStr::from_bytes(name);
            let Ok(st) = nix::sys::stat::fstatat(&fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
                continue;
            };
            match crate::fsutil::Kind::of(st.st_mode) {
                crate::fsutil::Kind::Dir => dirs.push(rel.join(name)),
                crate::fsutil::Kind::File => {
                    bytes = bytes.saturating_add(u64::try_from(st.st_size).unwrap_or(0));
                    if bytes > max_bytes {
                        return Usage::Bytes;
                    }
                }
                _ => {}
            }
        }
    }
    Usage::Within
}

/// Writes the system CA bundle followed by `extra` into `home/ca.pem` for `http.sslCAInfo`
/// (which replaces libcurl's default bundle, so both go in).
fn ca_bundle(extra: &Path, home: &Path) -> Result<PathBuf, GitError> {
    let mut bundle = SYSTEM_CA_BUNDLES
        .iter()
        .find_map(|p| fs::read(p).ok())
        .unwrap_or_default();
    bundle.push(b'\n');
    bundle.extend(fs::read(extra).map_err(|source| GitError::Io {
        what: "reading fetch.extra_ca",
        path: extra.to_owned(),
        source,
    })?);
    let path = home.join("ca.pem");
    fs::write(&path, bundle).map_err(|source| GitError::Io {
        what: "writing the CA bundle",
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Which part of a stream [`read_bounded`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// The first bytes (a command's answer).
    Head,
    /// The last bytes (where git says why it failed).
    Tail,
}

/// Reads `pipe` to its end, keeping at most `cap` bytes of it.
fn read_bounded(mut pipe: impl Read, cap: usize, keep: Keep) -> String {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        match keep {
            Keep::Head => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            Keep::Tail => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * cap {
                    kept.drain(..kept.len() - cap);
                }
            }
        }
    }
    if kept.len() > cap {
        kept.drain(..kept.len() - cap);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// Git's output in a message: control characters (a server's `remote:` lines are its own text)
/// become spaces, lines are joined with `; `, and only the last [`MAX_MESSAGE`] characters stay.
fn clean_message(text: &str) -> String {
    let joined = text
        .lines()
        .map(|l| {
            l.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect::<String>()
        })
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let count = joined.chars().count();
    if count <= MAX_MESSAGE {
        joined
    } else {
        let tail: String = joined.chars().skip(count - MAX_MESSAGE).collect();
        format!("…{tail}")
    }
}

#[cfg(test)]
mod tests;
