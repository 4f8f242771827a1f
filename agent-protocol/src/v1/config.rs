//! The operator's configuration file (`/etc/bulwark/config.toml`), version 1.
//!
//! This is where every ceiling and every weakening lives: a job spec can ask for resources and
//! network, but only up to what this file allows, and only this file can turn on rlimit
//! fallback or audit mode. Every section is optional and defaults to the values in DESIGN.md,
//! so an empty file (or no file) is a valid configuration.
//!
//! The file is read in two stages. serde reads it into private "raw" structs that keep
//! durations and sizes as strings, refusing unknown keys and wrong types with the line. Then
//! [`Config::from_toml_str`] converts and checks each value, collecting every problem as a
//! [`FieldError`](crate::FieldError) named by its key path (`limits.max_memory`). A custom
//! `deserialize_with` was the alternative; it stops at the first bad value and cannot name the
//! key path in its message, so it was rejected.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::allow::{check_hostname, CeilingEntry, IpNet, METADATA_ADDRESSES};
use super::job::{MIN_DISK, MIN_MEMORY};
use super::rules::{check_absolute_path, key_segment};
use crate::error::{quote, Errors, SpecError};
use crate::units::{cpu_millis, parse_duration, parse_size, CpuCount};

/// The builder id used when the configuration names none. `.invalid` is reserved (RFC 2606),
/// so provenance from an unconfigured runner can never be mistaken for a real builder's.
pub const DEFAULT_BUILDER_ID: &str = "https://bulwark.invalid/builder/local";

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `runDetails.builder.id` in provenance; a URI.
    pub builder_id: String,
    /// `[limits]`: ceilings on what a job may ask for.
    pub limits: LimitsConfig,
    /// `[fetch]`: where the runner itself may fetch from.
    pub fetch: FetchConfig,
    /// `[egress]`: the most a job's network allowlist may contain.
    pub egress: EgressConfig,
    /// `[paths]`: overrides of where state and runtime files live.
    pub paths: PathsConfig,
    /// `[daemon]`: how `bulwark daemon` works with its coordinator.
    pub daemon: DaemonConfig,
    /// `[credentials.<name>]`: what trusted jobs' identity tokens are exchanged for.
    pub credentials: BTreeMap<String, super::credentials::CredentialProvider>,
    /// `[caches]`: build caches kept between jobs (docs/caches.md).
    pub caches: CachesConfig,
    /// `[host]`: what the runner must know about its own host.
    pub host: HostConfig,
}

/// `[host]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostConfig {
    /// Addresses that reach this host although they are on none of its interfaces: a cloud
    /// instance's public address, which a NAT in front of it translates (and may hairpin
    /// back), a load balancer's address that forwards to it. Treated as the host's own, as its
    /// interface addresses are: the egress proxy refuses them unless the job lists the address
    /// and port and a ceiling entry names that same address and port (never in audit mode),
    /// and the runner's own fetches (tools, sources, token services) unless
    /// `fetch.allow_private` names the address itself (docs/egress.md, docs/tools.md).
    pub addresses: Vec<std::net::IpAddr>,
}

/// `[caches]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachesConfig {
    /// Whether jobs may have caches at all (`enabled = true`); a spec with `[[caches]]` is
    /// refused where they are off.
    pub enabled: bool,
    /// Largest cache that is saved (`max_size = "4GiB"`), weighed as the store weighs caches:
    /// its file contents plus [`CACHE_ENTRY_CHARGE`] per entry (the block each takes on disk);
    /// a job that leaves more is not refused, its cache is not saved.
    pub max_size: u64,
    /// Most entries (files, directories, symlinks) a saved cache may hold
    /// (`max_entries = 500000`).
    pub max_entries: u64,
    /// Most bytes all saved caches of this host may hold together (`max_total = "32GiB"`, at
    /// least `max_size`), each cache weighed as for `max_size`: a save that would go
    /// over it first removes the least recently used caches it may remove (an untrusted job's
    /// save only untrusted ones), and is skipped when that is not enough.
    pub max_total: u64,
    /// Most entries all saved caches may hold together (`max_total_entries = 2000000`, at
    /// least `max_entries`), weighed like `max_total`: what keeps caches of empty files and
    /// directories from using up the filesystem's inodes.
    pub max_total_entries: u64,
    /// A cache no job has restored or saved for this long is removed by the next save of any
    /// cache, or by `bulwark caches prune` (`max_unused = "720h"`).
    pub max_unused: Duration,
}

/// Default [`CachesConfig::max_size`]: 4 GiB.
pub const DEFAULT_CACHE_MAX_SIZE: u64 = 4 << 30;
/// Default [`CachesConfig::max_entries`].
pub const DEFAULT_CACHE_MAX_ENTRIES: u64 = 500_000;
/// Default [`CachesConfig::max_total`]: 32 GiB.
pub const DEFAULT_CACHE_MAX_TOTAL: u64 = 32 << 30;
/// What each entry (file, directory, symlink) of a saved cache counts for toward
/// [`CachesConfig::max_total`], on top of file contents: a block and an inode, near enough.
pub const CACHE_ENTRY_CHARGE: u64 = 4096;

/// Default [`CachesConfig::max_total_entries`].
pub const DEFAULT_CACHE_MAX_TOTAL_ENTRIES: u64 = 2_000_000;
/// Default [`CachesConfig::max_unused`]: 30 days.
pub const DEFAULT_CACHE_MAX_UNUSED: Duration = Duration::from_secs(30 * 24 * 3600);

impl Default for CachesConfig {
    fn default() -> Self {
        CachesConfig {
            enabled: true,
            max_size: DEFAULT_CACHE_MAX_SIZE,
            max_entries: DEFAULT_CACHE_MAX_ENTRIES,
            max_total: DEFAULT_CACHE_MAX_TOTAL,
            max_total_entries: DEFAULT_CACHE_MAX_TOTAL_ENTRIES,
            max_unused: DEFAULT_CACHE_MAX_UNUSED,
        }
    }
}

/// `[daemon]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// How long an idle daemon waits between asking its coordinator for a job
    /// (`poll_interval = "5s"`; 100ms to 10m), and how often it asks, for each job it runs,
    /// whether the job was cancelled. Also the first wait after a failed request, doubled on
    /// each further failure up to a minute.
    pub poll_interval: Duration,
    /// How long a finished job's directory (its spec, outputs, log, result and provenance)
    /// stays on the host after it was reported (`keep_outputs = "168h"`); `0s`: removed as
    /// soon as it is reported.
    pub keep_outputs: Duration,
    /// How many jobs the daemon runs at once (`slots = 1`; 1 to 256). Each is its own run
    /// with its own uid and cgroup; the host's limits and the jobs' own bound what they take.
    /// At most [`super::control::MAX_HOLDING`]: the daemon names every job it holds when it
    /// asks for another.
    pub slots: usize,
    /// How often a running job's new `job.log` lines are sent to the coordinator, so an
    /// operator can follow it (`live_log_interval = "2s"`; 100ms to 10m); `None` (`"0s"`):
    /// the log arrives only with the result.
    pub live_log_interval: Option<Duration>,
    /// Where the daemon serves its Prometheus metrics (`GET /metrics`), without
    /// authentication (`metrics_listen = "127.0.0.1:9441"`); `None` (absent): not served.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// A PEM bundle of certificate authorities trusted for the coordinator's `https://` URL,
    /// in addition to the system's (`coordinator_ca = "/etc/bulwark/coordinator-ca.pem"`: a
    /// coordinator serving its own certificate from a private CA); used by `bulwark register`,
    /// `bulwark rekey` and the daemon. An absolute path.
    pub coordinator_ca: Option<std::path::PathBuf>,
}

/// The default [`DaemonConfig::poll_interval`].
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// The default [`DaemonConfig::live_log_interval`].
pub const DEFAULT_LIVE_LOG_INTERVAL: Duration = Duration::from_secs(2);

/// The most [`DaemonConfig::slots`]: what a lease request may list as held.
const MAX_SLOTS: u64 = super::control::MAX_HOLDING as u64;

/// The default [`DaemonConfig::keep_outputs`]: a week.
pub const DEFAULT_KEEP_OUTPUTS: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            poll_interval: DEFAULT_POLL_INTERVAL,
            keep_outputs: DEFAULT_KEEP_OUTPUTS,
            slots: 1,
            live_log_interval: Some(DEFAULT_LIVE_LOG_INTERVAL),
            metrics_listen: None,
            coordinator_ca: None,
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Longest job timeout a spec may ask for (`max_timeout = "6h"`).
    pub max_timeout: Duration,
    /// Most memory a spec may ask for, in bytes (`max_memory = "16GiB"`).
    pub max_memory: u64,
    /// Most processes a spec may ask for (`max_pids = 4096`).
    pub max_pids: u64,
    /// Most CPUs a spec may ask for, in thousandths of a CPU (`max_cpus = 4`), and what a
    /// job that asks for nothing gets; `None` (the default): no ceiling, and a job's CPU use
    /// is limited only when its spec asks.
    pub max_cpus: Option<u64>,
    /// Largest job disk a spec may ask for, in bytes (`max_disk = "50GiB"`), and the disk
    /// every job that asks for none gets; `None` (the default): jobs get a disk of their own
    /// only when their spec asks.
    pub max_disk: Option<u64>,
    /// Run with rlimits alone where cgroups are unavailable; a recorded weakening.
    pub allow_rlimit_fallback: bool,
    /// Host uids handed to jobs, one per running job (`job_uids = "200000-265535"`): root
    /// mode's range (default [`DEFAULT_JOB_UIDS`]), or in subuid mode a part of the runner's
    /// subordinate range (default: all of it). `None` when not configured.
    pub job_uids: Option<UidRange>,
    /// How job processes map to host users (`isolation = "auto"`).
    pub isolation: IsolationChoice,
    /// Largest stored job log, in bytes (`log_cap = "16MiB"`); the rest is cut with a marker.
    pub log_cap: u64,
    /// Time between SIGTERM and SIGKILL when a step times out (`kill_grace = "5s"`).
    pub kill_grace: Duration,
    /// Most output files one job may produce (`max_outputs = 10000`).
    pub max_outputs: u64,
    /// Most output bytes one job may produce in total (`max_output_bytes = "64GiB"`).
    pub max_output_bytes: u64,
    /// Space every job must leave available on the filesystem of the job directories and on
    /// that of the output directory (`min_free_disk = "5%"` or `"20GiB"`; `"0"` turns the
    /// check off, which `result.json` records).
    pub min_free_disk: DiskReserve,
}

/// `limits.min_free_disk`: how much of a filesystem a job must leave available.
///
/// Why a reserve and not a per-job quota: a quota needs project quotas on the state
/// filesystem (an ext4 or XFS mount option few hosts have) or a filesystem image per job;
/// a reserve works on every filesystem, rootless too, and stops what matters on a shared
/// build host: one job filling the disk under every other job and service. It is checked
/// before a job starts, every 100 ms while it runs (a job that crosses it is stopped and
/// its directory removed), and before outputs are copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskReserve {
    /// `"0"`: not checked.
    Off,
    /// A size: at least this many bytes stay available.
    Bytes(u64),
    /// `"N%"` (1 to 50): at least this share of the filesystem's size stays available.
    Percent(u8),
}

impl DiskReserve {
    /// The bytes to keep available on a filesystem of `total` bytes; `None` when off.
    pub fn bytes_of(self, total: u64) -> Option<u64> {
        match self {
            DiskReserve::Off => None,
            DiskReserve::Bytes(b) => Some(b),
            DiskReserve::Percent(p) => Some(total / 100 * u64::from(p)),
        }
    }
}

impl fmt::Display for DiskReserve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskReserve::Off => f.write_str("0"),
            DiskReserve::Bytes(b) => f.write_str(&crate::units::format_size(*b)),
            DiskReserve::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl FromStr for DiskReserve {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(number) = s.strip_suffix('%') {
            return match number.parse::<u8>() {
                Ok(0) => Ok(DiskReserve::Off),
                Ok(p @ 1..=50) => Ok(DiskReserve::Percent(p)),
                _ => Err(format!(
                    "{} is not a share between 1% and 50%; use a percentage like \"5%\", a size like \"20GiB\", or \"0\" for no check",
                    crate::error::quote(s)
                )),
            };
        }
        if s == "0" {
            return Ok(DiskReserve::Off);
        }
        match crate::units::parse_size(s)? {
            0 => Ok(DiskReserve::Off),
            b => Ok(DiskReserve::Bytes(b)),
        }
    }
}

/// Root mode's job uids when `limits.job_uids` is not configured.
pub const DEFAULT_JOB_UIDS: UidRange = UidRange {
    first: 200_000,
    last: 265_535,
};

impl LimitsConfig {
    /// The uids root mode hands to jobs.
    pub fn root_job_uids(&self) -> UidRange {
        self.job_uids.unwrap_or(DEFAULT_JOB_UIDS)
    }
}

/// `limits.isolation`: which isolation mode the runner must use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IsolationChoice {
    /// `auto`: `root-per-job-uid` as root, `rootless-single-uid` otherwise.
    #[default]
    Auto,
    /// `root-per-job-uid`: refuse to run unless root.
    RootPerJobUid,
    /// `subuid`: a runner that is not root gives each job a uid of its subordinate range
    /// (`/etc/subuid`, `/etc/subgid`, `newuidmap`); refuse to run where that is not possible.
    Subuid,
    /// `rootless-single-uid`: every job runs as the runner's own uid (not as root).
    RootlessSingleUid,
}

impl FromStr for IsolationChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IsolationChoice::Auto),
            "root-per-job-uid" => Ok(IsolationChoice::RootPerJobUid),
            "subuid" => Ok(IsolationChoice::Subuid),
            "rootless-single-uid" => Ok(IsolationChoice::RootlessSingleUid),
            other => Err(format!(
                "unknown isolation mode {other:?}: use \"auto\", \"root-per-job-uid\", \"subuid\" \
                 or \"rootless-single-uid\""
            )),
        }
    }
}

/// An inclusive range of host uids, written `first-last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UidRange {
    /// First uid of the range.
    pub first: u32,
    /// Last uid of the range (inclusive).
    pub last: u32,
}

/// `[fetch]`: what the runner itself (tools, rootfs, source) may fetch, and how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchConfig {
    /// Loopback/private/link-local addresses or networks the runner may fetch from, like
    /// `127.0.0.1` or `10.0.0.0/8`. Metadata addresses are refused even here.
    pub allow_private: Vec<String>,
    /// Absolute directories `file://` URLs may point into; empty: no `file://` at all.
    pub file_roots: Vec<String>,
    /// Absolute path of a PEM bundle trusted in addition to the system roots; empty: none.
    pub extra_ca: String,
    /// Largest download, in bytes (`max_bytes = "2GiB"`); a larger body is refused while it
    /// streams. Archives may unpack to at most 8 times this.
    pub max_bytes: u64,
    /// Longest one download may take from connect to last byte (`timeout = "10m"`); the
    /// runner gives unpacking a tool or rootfs archive as long again.
    pub timeout: Duration,
}

/// Default [`FetchConfig::max_bytes`]: 2 GiB.
pub const DEFAULT_FETCH_MAX_BYTES: u64 = 2 << 30;
/// Default [`FetchConfig::timeout`]: 10 minutes.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(600);

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            allow_private: Vec::new(),
            file_roots: Vec::new(),
            extra_ca: String::new(),
            max_bytes: DEFAULT_FETCH_MAX_BYTES,
            timeout: DEFAULT_FETCH_TIMEOUT,
        }
    }
}

/// `[egress]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// The most an untrusted job may be allowed (see [`CeilingEntry`]).
    pub ceiling_untrusted: Vec<String>,
    /// The most a trusted job may be allowed.
    pub ceiling_trusted: Vec<String>,
    /// Whether audit mode may be used at all.
    pub allow_audit: bool,
    /// Run jobs in audit mode (log what would be denied, allow it); needs `allow_audit`.
    pub audit: bool,
    /// Static name to address overrides for the proxy's resolver.
    pub hosts: BTreeMap<String, String>,
}

/// `[paths]`: where the runner keeps state and runtime files, when not the defaults
/// (`/var/lib/bulwark` and `/run/bulwark` as root, the XDG directories rootless).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PathsConfig {
    /// Absolute path of the state directory (keys, tool store, journal, inventory).
    pub state_dir: Option<String>,
    /// Absolute path of the runtime directory (sockets).
    pub runtime_dir: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            builder_id: DEFAULT_BUILDER_ID.to_owned(),
            limits: LimitsConfig::default(),
            fetch: FetchConfig::default(),
            egress: EgressConfig::default(),
            paths: PathsConfig::default(),
            daemon: DaemonConfig::default(),
            credentials: BTreeMap::new(),
            caches: CachesConfig::default(),
            host: HostConfig::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_timeout: Duration::from_secs(6 * 3600),
            max_memory: 16 << 30,
            max_pids: 4096,
            max_cpus: None,
            max_disk: None,
            allow_rlimit_fallback: false,
            job_uids: None,
            isolation: IsolationChoice::Auto,
            log_cap: 16 << 20,
            kill_grace: Duration::from_secs(5),
            max_outputs: 10_000,
            max_output_bytes: 64 << 30,
            min_free_disk: DiskReserve::Percent(5),
        }
    }
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            ceiling_untrusted: vec!["*".to_owned()],
            ceiling_trusted: vec!["*".to_owned()],
            allow_audit: false,
            audit: false,
            hosts: BTreeMap::new(),
        }
    }
}

/// Lowest uid a job may run as: below are system and login users.
pub const MIN_JOB_UID: u32 = 1000;
/// Highest uid a job may run as: 4294967295 is `(uid_t)-1`, "no uid" to the kernel.
pub const MAX_JOB_UID: u32 = u32::MAX - 1;

impl UidRange {
    /// How many uids the range holds.
    pub fn len(&self) -> u64 {
        u64::from(self.last) - u64::from(self.first) + 1
    }

    /// Always false: a range holds at least one uid.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `uid` is in the range.
    pub fn contains(&self, uid: u32) -> bool {
        (self.first..=self.last).contains(&uid)
    }
}

impl FromStr for UidRange {
    type Err = String;

    /// Parses `first-last`, both inclusive, within 1000-4294967294.
    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |n: &str| {
            n.parse::<u32>()
                .ok()
                .filter(|_| n.bytes().all(|b| b.is_ascii_digit()))
        };
        let Some((first, last)) = s
            .split_once('-')
            .and_then(|(a, b)| Some((parse(a)?, parse(b)?)))
        else {
            return Err(format!(
                "expected a uid range like 200000-265535, got {}",
                quote(s)
            ));
        };
        if first > last {
            return Err(format!("{}: the first uid is above the last", quote(s)));
        }
        if first < MIN_JOB_UID {
            return Err(format!(
                "{}: job uids must not include system or login users (below {MIN_JOB_UID}); use a range like 200000-265535",
                quote(s)
            ));
        }
        if last > MAX_JOB_UID {
            return Err(format!(
                "{}: the last uid must be at most {MAX_JOB_UID}",
                quote(s)
            ));
        }
        Ok(UidRange { first, last })
    }
}

impl fmt::Display for UidRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// The file as serde reads it: like [`Config`], with durations, sizes and uid ranges still
/// strings so that a bad one is reported by key path together with every other problem.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawConfig {
    builder_id: Option<String>,
    limits: RawLimits,
    fetch: RawFetch,
    egress: EgressConfig,
    paths: PathsConfig,
    daemon: RawDaemon,
    credentials: BTreeMap<String, super::credentials::RawProvider>,
    caches: RawCaches,
    host: RawHost,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawHost {
    addresses: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawCaches {
    enabled: Option<bool>,
    max_size: Option<String>,
    max_entries: Option<u64>,
    max_total: Option<String>,
    max_total_entries: Option<u64>,
    max_unused: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawDaemon {
    poll_interval: Option<String>,
    keep_outputs: Option<String>,
    slots: Option<u64>,
    live_log_interval: Option<String>,
    metrics_listen: Option<String>,
    coordinator_ca: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawLimits {
    max_timeout: Option<String>,
    max_memory: Option<String>,
    max_pids: Option<u64>,
    max_cpus: Option<CpuCount>,
    max_disk: Option<String>,
    allow_rlimit_fallback: Option<bool>,
    job_uids: Option<String>,
    isolation: Option<String>,
    log_cap: Option<String>,
    kill_grace: Option<String>,
    max_outputs: Option<u64>,
    max_output_bytes: Option<String>,
    min_free_disk: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawFetch {
    allow_private: Vec<String>,
    file_roots: Vec<String>,
    extra_ca: String,
    max_bytes: Option<String>,
    timeout: Option<String>,
}

impl Config {
    /// Reads and checks a configuration file's text. Unknown keys and wrong types are a
    /// [`SpecError::Syntax`] with the line; bad values are [`SpecError::Invalid`] with every
    /// problem named by key path.
    pub fn from_toml_str(s: &str) -> Result<Config, SpecError> {
        let raw: RawConfig = toml::from_str(s).map_err(|e| SpecError::from_toml(s, &e))?;
        let mut errors = Errors::default();
        let builder_id = raw
            .builder_id
            .unwrap_or_else(|| DEFAULT_BUILDER_ID.to_owned());
        errors.take("builder_id", check_builder_id(&builder_id));
        let limits = convert_limits(raw.limits, &mut errors);
        let fetch = convert_fetch(raw.fetch, &mut errors);
        check_egress(&raw.egress, &mut errors);
        for (key, dir) in [
            ("paths.state_dir", &raw.paths.state_dir),
            ("paths.runtime_dir", &raw.paths.runtime_dir),
        ] {
            if let Some(dir) = dir {
                errors.take(key, check_absolute_path(dir));
            }
        }
        let mut daemon = DaemonConfig::default();
        let interval =
            |key: &'static str, text: &str, off: bool, errors: &mut Errors| match parse_duration(
                text,
            ) {
                Ok(d) if off && d.is_zero() => Some(None),
                Ok(d) if (Duration::from_millis(100)..=Duration::from_secs(600)).contains(&d) => {
                    Some(Some(d))
                }
                Ok(_) => {
                    let or_off = if off { " (or 0s: off)" } else { "" };
                    errors.push(
                        key,
                        format!("{} is outside 100ms to 10m{or_off}", quote(text)),
                    );
                    None
                }
                Err(e) => {
                    errors.push(key, e);
                    None
                }
            };
        if let Some(p) = &raw.daemon.poll_interval {
            if let Some(Some(d)) = interval("daemon.poll_interval", p, false, &mut errors) {
                daemon.poll_interval = d;
            }
        }
        if let Some(l) = &raw.daemon.live_log_interval {
            if let Some(d) = interval("daemon.live_log_interval", l, true, &mut errors) {
                daemon.live_log_interval = d;
            }
        }
        if let Some(m) = &raw.daemon.metrics_listen {
            match m.parse::<std::net::SocketAddr>() {
                Ok(addr) => daemon.metrics_listen = Some(addr),
                Err(_) => errors.push(
                    "daemon.metrics_listen",
                    format!(
                        "{} is not an address and port, such as 127.0.0.1:9441 or [::1]:9441",
                        quote(m)
                    ),
                ),
            }
        }
        if let Some(ca) = &raw.daemon.coordinator_ca {
            if errors
                .take("daemon.coordinator_ca", check_absolute_path(ca))
                .is_some()
            {
                daemon.coordinator_ca = Some(std::path::PathBuf::from(ca));
            }
        }
        match raw.daemon.slots {
            Some(n @ 1..=MAX_SLOTS) => daemon.slots = n as usize,
            Some(n) => errors.push("daemon.slots", format!("{n} is outside 1 to {MAX_SLOTS}")),
            None => {}
        }
        if let Some(k) = &raw.daemon.keep_outputs {
            if let Some(d) = errors.take("daemon.keep_outputs", parse_duration(k)) {
                daemon.keep_outputs = d;
            }
        }
        let mut caches = CachesConfig::default();
        if let Some(enabled) = raw.caches.enabled {
            caches.enabled = enabled;
        }
        match raw.caches.max_size.as_deref().map(parse_size) {
            None => {}
            Some(Ok(0)) => errors.push("caches.max_size", "must be greater than zero"),
            Some(Ok(n)) => caches.max_size = n,
            Some(Err(e)) => errors.push("caches.max_size", e),
        }
        match raw.caches.max_entries {
            None => {}
            Some(0) => errors.push("caches.max_entries", "must be greater than zero"),
            Some(n) => caches.max_entries = n,
        }
        // The heaviest cache the per-cache limits let through must fit in the store.
        let largest = caches.max_size;
        match raw.caches.max_total.as_deref().map(parse_size) {
            None if largest > caches.max_total => {
                // Only the per-cache limits were raised: the default total grows with them.
                caches.max_total = largest;
            }
            None => {}
            Some(Ok(n)) if n < largest => errors.push(
                "caches.max_total",
                format!(
                    "{n} bytes is less than the largest cache caches.max_size allows \
                     ({largest} bytes), which could then never be kept; raise it or lower \
                     caches.max_size"
                ),
            ),
            Some(Ok(n)) => caches.max_total = n,
            Some(Err(e)) => errors.push("caches.max_total", e),
        }
        match raw.caches.max_total_entries {
            None if caches.max_entries > caches.max_total_entries => {
                caches.max_total_entries = caches.max_entries;
            }
            None => {}
            Some(n) if n < caches.max_entries => errors.push(
                "caches.max_total_entries",
                format!(
                    "{n} is less than caches.max_entries ({}): no cache that large could be \
                     kept; raise it or lower caches.max_entries",
                    caches.max_entries
                ),
            ),
            Some(n) => caches.max_total_entries = n,
        }
        match raw.caches.max_unused.as_deref().map(parse_duration) {
            None => {}
            Some(Ok(d)) if d.is_zero() => {
                errors.push("caches.max_unused", "must be greater than zero")
            }
            Some(Ok(d)) => caches.max_unused = d,
            Some(Err(e)) => errors.push("caches.max_unused", e),
        }
        let config = Config {
            builder_id,
            limits,
            fetch,
            egress: raw.egress,
            paths: raw.paths,
            daemon,
            credentials: super::credentials::convert(raw.credentials, &mut errors),
            caches,
            host: convert_host(raw.host, &mut errors),
        };
        SpecError::check(errors.list, config)
    }
}

fn check_builder_id(id: &str) -> Result<(), String> {
    let scheme_len = id.find(':').unwrap_or(0);
    let scheme_ok = scheme_len > 0
        && id.starts_with(|c: char| c.is_ascii_alphabetic())
        && id[..scheme_len]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if id.is_empty() {
        Err(format!(
            "must not be empty; name this builder with a URI, like {DEFAULT_BUILDER_ID}"
        ))
    } else if !scheme_ok
        || id.len() == scheme_len + 1
        || id.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        Err(format!(
            "must be a URI, like https://ci.example.com/bulwark/pool-a, got {}",
            quote(id)
        ))
    } else {
        Ok(())
    }
}

fn convert_limits(raw: RawLimits, errors: &mut Errors) -> LimitsConfig {
    let d = LimitsConfig::default();
    let positive_duration =
        |errors: &mut Errors, key: &str, text: Option<String>, default: Duration| {
            let Some(text) = text else { return default };
            match parse_duration(&text) {
                Ok(value) if !value.is_zero() || key == "limits.kill_grace" => value,
                Ok(_) => errors
                    .take(key, Err("must be greater than zero".to_owned()))
                    .unwrap_or(default),
                Err(e) => errors.take(key, Err(e)).unwrap_or(default),
            }
        };
    let size = |errors: &mut Errors, key: &str, text: Option<String>, default: u64, min: u64| {
        let Some(text) = text else { return default };
        match parse_size(&text) {
            Ok(0) => errors
                .take(key, Err("must be greater than zero".to_owned()))
                .unwrap_or(default),
            Ok(value) if value < min => {
                let message = format!("must be at least {}", crate::units::format_size(min));
                errors.take(key, Err(message)).unwrap_or(default)
            }
            Ok(value) => value,
            Err(e) => errors.take(key, Err(e)).unwrap_or(default),
        }
    };
    let count = |errors: &mut Errors, key: &str, value: Option<u64>, default: u64| match value {
        Some(0) => errors
            .take(key, Err("must be greater than zero".to_owned()))
            .unwrap_or(default),
        Some(value) => value,
        None => default,
    };
    LimitsConfig {
        max_timeout: positive_duration(
            errors,
            "limits.max_timeout",
            raw.max_timeout,
            d.max_timeout,
        ),
        max_memory: size(
            errors,
            "limits.max_memory",
            raw.max_memory,
            d.max_memory,
            MIN_MEMORY,
        ),
        max_pids: count(errors, "limits.max_pids", raw.max_pids, d.max_pids),
        max_cpus: raw
            .max_cpus
            .and_then(|c| errors.take("limits.max_cpus", cpu_millis(c))),
        max_disk: raw.max_disk.and_then(|text| {
            let bytes = parse_size(&text).and_then(|b| {
                if b < MIN_DISK {
                    Err(format!(
                        "{} is below the minimum of {}",
                        crate::units::format_size(b),
                        crate::units::format_size(MIN_DISK)
                    ))
                } else {
                    Ok(b)
                }
            });
            errors.take("limits.max_disk", bytes)
        }),
        allow_rlimit_fallback: raw.allow_rlimit_fallback.unwrap_or(d.allow_rlimit_fallback),
        job_uids: raw
            .job_uids
            .and_then(|text| errors.take("limits.job_uids", text.parse())),
        isolation: raw
            .isolation
            .and_then(|text| errors.take("limits.isolation", text.parse()))
            .unwrap_or(d.isolation),
        log_cap: size(errors, "limits.log_cap", raw.log_cap, d.log_cap, 1),
        kill_grace: positive_duration(errors, "limits.kill_grace", raw.kill_grace, d.kill_grace),
        max_outputs: count(errors, "limits.max_outputs", raw.max_outputs, d.max_outputs),
        max_output_bytes: size(
            errors,
            "limits.max_output_bytes",
            raw.max_output_bytes,
            d.max_output_bytes,
            1,
        ),
        min_free_disk: raw
            .min_free_disk
            .and_then(|text| errors.take("limits.min_free_disk", text.parse()))
            .unwrap_or(d.min_free_disk),
    }
}

fn convert_fetch(raw: RawFetch, errors: &mut Errors) -> FetchConfig {
    let max_bytes = match raw.max_bytes.as_deref().map(parse_size) {
        None => DEFAULT_FETCH_MAX_BYTES,
        Some(Ok(0)) => errors
            .take(
                "fetch.max_bytes",
                Err("must be greater than zero".to_owned()),
            )
            .unwrap_or(DEFAULT_FETCH_MAX_BYTES),
        Some(Ok(value)) => value,
        Some(Err(e)) => errors
            .take("fetch.max_bytes", Err(e))
            .unwrap_or(DEFAULT_FETCH_MAX_BYTES),
    };
    let timeout = match raw.timeout.as_deref().map(parse_duration) {
        None => DEFAULT_FETCH_TIMEOUT,
        Some(Ok(value)) if value.is_zero() => errors
            .take("fetch.timeout", Err("must be greater than zero".to_owned()))
            .unwrap_or(DEFAULT_FETCH_TIMEOUT),
        Some(Ok(value)) => value,
        Some(Err(e)) => errors
            .take("fetch.timeout", Err(e))
            .unwrap_or(DEFAULT_FETCH_TIMEOUT),
    };
    let fetch = FetchConfig {
        allow_private: raw.allow_private,
        file_roots: raw.file_roots,
        extra_ca: raw.extra_ca,
        max_bytes,
        timeout,
    };
    check_fetch(&fetch, errors);
    fetch
}

fn check_fetch(fetch: &FetchConfig, errors: &mut Errors) {
    for (i, entry) in fetch.allow_private.iter().enumerate() {
        let path = format!("fetch.allow_private[{i}]");
        if let Some(net) = errors.take(&path, IpNet::parse(entry)) {
            if let Some(metadata) = METADATA_ADDRESSES.iter().find(|m| net.contains(**m)) {
                let message = format!("includes the cloud metadata address {metadata}, which is refused everywhere; use a narrower network");
                errors.push(path, message);
            }
        }
    }
    for (i, root) in fetch.file_roots.iter().enumerate() {
        errors.take(&format!("fetch.file_roots[{i}]"), check_absolute_path(root));
    }
    if !fetch.extra_ca.is_empty() {
        errors.take("fetch.extra_ca", check_absolute_path(&fetch.extra_ca));
    }
}

fn convert_host(raw: RawHost, errors: &mut Errors) -> HostConfig {
    let mut addresses = Vec::new();
    for (i, entry) in raw.addresses.iter().enumerate() {
        match entry.parse::<std::net::IpAddr>() {
            // An IPv4 address written in IPv6 form is kept as the IPv4 address it is, which
            // is what a connection to it is compared with.
            Ok(std::net::IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_some() => {
                addresses.extend(v6.to_ipv4_mapped().map(std::net::IpAddr::V4));
            }
            Ok(ip) => addresses.push(ip),
            Err(_) => errors.push(
                format!("host.addresses[{i}]"),
                format!(
                    "{} is not an IP address (one address per entry, like \"203.0.113.7\")",
                    quote(entry)
                ),
            ),
        }
    }
    HostConfig { addresses }
}

fn check_egress(egress: &EgressConfig, errors: &mut Errors) {
    for (key, list) in [
        ("ceiling_untrusted", &egress.ceiling_untrusted),
        ("ceiling_trusted", &egress.ceiling_trusted),
    ] {
        for (i, entry) in list.iter().enumerate() {
            errors.take(&format!("egress.{key}[{i}]"), CeilingEntry::parse(entry));
        }
    }
    if egress.audit && !egress.allow_audit {
        errors.push(
            "egress.audit",
            "audit mode also needs egress.allow_audit = true",
        );
    }
    for (name, address) in &egress.hosts {
        let path = format!("egress.hosts.{}", key_segment(name));
        if errors.take(&path, check_hostname(name)).is_some()
            && address.parse::<std::net::IpAddr>().is_err()
        {
            errors.push(
                path,
                format!("must map to an IP address, got {}", quote(address)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_section_is_read_and_each_bad_value_named() {
        let c = Config::from_toml_str(
            "[daemon]\npoll_interval = \"500ms\"\nkeep_outputs = \"0s\"\nslots = 4\nlive_log_interval = \"0s\"\nmetrics_listen = \"[::1]:9441\"\n",
        )
        .unwrap();
        assert_eq!(c.daemon.metrics_listen, Some("[::1]:9441".parse().unwrap()));
        assert_eq!(Config::default().daemon.metrics_listen, None);
        assert_eq!(Config::default().daemon.coordinator_ca, None);
        assert_eq!(c.daemon.live_log_interval, None);
        assert_eq!(
            Config::default().daemon.live_log_interval,
            Some(Duration::from_secs(2))
        );
        assert_eq!(c.daemon.poll_interval, Duration::from_millis(500));
        assert_eq!(c.daemon.keep_outputs, Duration::ZERO);
        assert_eq!(c.daemon.slots, 4);
        assert_eq!(Config::default().daemon.slots, 1);
        let e = Config::from_toml_str(
            "[daemon]\npoll_interval = \"1ms\"\nkeep_outputs = \"a week\"\nslots = 0\nlive_log_interval = \"20m\"\nmetrics_listen = \"localhost:9441\"\ncoordinator_ca = \"ca.pem\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("daemon.poll_interval: \"1ms\" is outside 100ms to 10m"),
            "{e}"
        );
        assert!(e.contains("daemon.keep_outputs:"), "{e}");
        assert!(e.contains("daemon.slots: 0 is outside 1 to 256"), "{e}");
        assert!(
            e.contains("daemon.metrics_listen: \"localhost:9441\" is not an address and port"),
            "{e}"
        );
        assert!(
            e.contains("daemon.coordinator_ca: must be an absolute path, got \"ca.pem\""),
            "{e}"
        );
        assert!(
            e.contains("daemon.live_log_interval: \"20m\" is outside 100ms to 10m (or 0s: off)"),
            "{e}"
        );
    }

    /// DESIGN.md's example configuration, verbatim.
    const DESIGN_EXAMPLE: &str = r#"
builder_id = "https://ci.example.com/bulwark/pool-a"    # runDetails.builder.id

[limits]                          # ceilings: a spec asking for more is refused with exit 2
max_timeout = "6h"
max_memory = "16GiB"
max_pids = 4096
allow_rlimit_fallback = false     # run with rlimits alone where cgroups are unavailable
job_uids = "200000-265535"        # root mode: host uids handed to jobs, one per running job

[fetch]                           # what the runner itself may fetch tools, rootfs and source from
allow_private = []                # loopback/private/link-local origins allowed, e.g. ["127.0.0.1"]
file_roots = []                   # directories file:// URLs may point into; empty: no file:// at all
extra_ca = ""                     # PEM bundle trusted in addition to the system roots

[egress]
ceiling_untrusted = ["*"]         # the most a job of that trust level may be allowed
ceiling_trusted = ["*"]
allow_audit = false               # whether audit mode may be used at all
audit = false                     # run jobs in audit mode (only with allow_audit)
hosts = {}                        # static name -> address overrides used by the proxy's resolver
"#;

    /// `systemd/config.example.toml` says every key it sets holds the built-in default but
    /// `builder_id`: it parses, and says so truthfully.
    #[test]
    fn the_example_configuration_parses_and_sets_only_defaults_but_the_builder_id() {
        let text = include_str!("../../../systemd/config.example.toml");
        let mut example = Config::from_toml_str(text).expect("the example parses");
        assert_ne!(example.builder_id, Config::default().builder_id);
        example.builder_id = Config::default().builder_id;
        assert_eq!(example, Config::default());
    }

    #[test]
    fn an_empty_file_gives_the_documented_defaults() {
        let config = Config::from_toml_str("").expect("empty config is valid");
        assert_eq!(config, Config::default());
        assert_eq!(config.builder_id, "https://bulwark.invalid/builder/local");
        let l = &config.limits;
        assert_eq!(l.max_timeout, Duration::from_secs(6 * 3600));
        assert_eq!(l.max_memory, 16 << 30);
        assert_eq!(l.max_pids, 4096);
        assert!(!l.allow_rlimit_fallback);
        assert_eq!(l.job_uids, None);
        assert_eq!(
            l.root_job_uids(),
            UidRange {
                first: 200_000,
                last: 265_535
            }
        );
        assert_eq!(l.isolation, IsolationChoice::Auto);
        assert_eq!(l.log_cap, 16 << 20);
        assert_eq!(l.kill_grace, Duration::from_secs(5));
        assert_eq!((l.max_outputs, l.max_output_bytes), (10_000, 64 << 30));
        assert_eq!(config.egress.ceiling_untrusted, ["*"]);
        assert!(!config.egress.audit && !config.egress.allow_audit);
    }

    #[test]
    fn the_design_example_parses_to_the_defaults_with_its_builder_id() {
        let config = Config::from_toml_str(DESIGN_EXAMPLE).expect("design example is valid");
        let mut expected = Config {
            builder_id: "https://ci.example.com/bulwark/pool-a".to_owned(),
            ..Config::default()
        };
        // Written out in the example, with the default's value.
        expected.limits.job_uids = Some(DEFAULT_JOB_UIDS);
        assert_eq!(config, expected);
    }

    #[test]
    fn every_extension_key_is_read() {
        let text = r#"
[limits]
log_cap = "1MiB"
kill_grace = "0s"
max_outputs = 5
max_output_bytes = "1GiB"
[fetch]
allow_private = ["127.0.0.1", "10.0.0.0/8"]
file_roots = ["/srv/tools"]
extra_ca = "/etc/bulwark/ca.pem"
max_bytes = "4GiB"
timeout = "1h"
[egress]
ceiling_untrusted = ["crates.io:443", "*:443"]
allow_audit = true
audit = true
hosts = { "mirror.internal" = "10.1.2.3" }
[paths]
state_dir = "/srv/bulwark/state"
runtime_dir = "/run/bulwark-a"
"#;
        let c = Config::from_toml_str(text).expect("valid");
        assert_eq!(
            (c.limits.log_cap, c.limits.kill_grace, c.limits.max_outputs),
            (1 << 20, Duration::ZERO, 5)
        );
        assert_eq!(c.fetch.allow_private.len(), 2);
        assert_eq!(
            (c.fetch.max_bytes, c.fetch.timeout),
            (4 << 30, Duration::from_secs(3600))
        );
        assert_eq!(
            c.egress.hosts.get("mirror.internal").map(String::as_str),
            Some("10.1.2.3")
        );
        assert_eq!(c.paths.state_dir.as_deref(), Some("/srv/bulwark/state"));
    }

    #[test]
    fn min_free_disk_takes_a_share_a_size_or_zero_and_names_the_key_otherwise() {
        let read = |v: &str| {
            Config::from_toml_str(&format!("[limits]\nmin_free_disk = \"{v}\"\n"))
                .map(|c| c.limits.min_free_disk)
        };
        assert_eq!(
            Config::default().limits.min_free_disk,
            DiskReserve::Percent(5)
        );
        assert_eq!(read("10%").unwrap(), DiskReserve::Percent(10));
        assert_eq!(read("20GiB").unwrap(), DiskReserve::Bytes(20 << 30));
        for off in ["0", "0%", "0B"] {
            assert_eq!(read(off).unwrap(), DiskReserve::Off, "{off}");
        }
        for (bad, says) in [
            ("51%", "\"51%\" is not a share between 1% and 50%"),
            ("-1%", "\"-1%\" is not a share"),
            ("5.5%", "\"5.5%\" is not a share"),
            ("20GB", "only binary units are accepted"),
            ("lots", "\"lots\" is not a size"),
        ] {
            let err = read(bad).expect_err(bad).to_string();
            assert!(
                err.contains("limits.min_free_disk: ") && err.contains(says),
                "{err}"
            );
        }
        assert_eq!(DiskReserve::Percent(5).bytes_of(1000), Some(50));
        assert_eq!(DiskReserve::Bytes(7).bytes_of(1000), Some(7));
        assert_eq!(DiskReserve::Off.bytes_of(1000), None);
        assert_eq!(DiskReserve::Percent(5).to_string(), "5%");
        assert_eq!(DiskReserve::Bytes(2 << 30).to_string(), "2GiB");
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_syntax_errors_with_the_line() {
        let err =
            Config::from_toml_str("[limits]\nmax_memroy = \"1GiB\"\n").expect_err("unknown key");
        assert!(matches!(err, SpecError::Syntax { .. }));
        assert!(
            err.to_string().contains("line 2") && err.to_string().contains("max_memroy"),
            "{err}"
        );
        let err = Config::from_toml_str("[limits]\nmax_pids = \"many\"\n").expect_err("wrong type");
        assert!(
            err.to_string().contains("line 2") && err.to_string().contains("max_pids"),
            "{err}"
        );
        assert_eq!(Config::default().limits.max_cpus, None);
        let err = Config::from_toml_str("[limits]\nmax_cpus = \"4\"\n").expect_err("wrong type");
        assert!(
            err.to_string().contains("line 2")
                && err.to_string().contains("a number of CPUs, like 2 or 1.5"),
            "{err}"
        );
        for (text, millis) in [("4", 4000), ("1.5", 1500), ("0.25", 250)] {
            let config = Config::from_toml_str(&format!("[limits]\nmax_cpus = {text}\n"))
                .expect("valid max_cpus");
            assert_eq!(config.limits.max_cpus, Some(millis), "{text}");
        }
    }

    #[test]
    fn the_cache_store_bounds_are_read_and_checked() {
        let c = Config::from_toml_str("").expect("valid");
        assert_eq!(
            (c.caches.max_total, c.caches.max_unused),
            (32 << 30, Duration::from_secs(30 * 86400))
        );
        let c = Config::from_toml_str(
            "[caches]\nmax_total = \"8GiB\"\nmax_total_entries = 600000\nmax_unused = \"48h\"\n",
        )
        .expect("valid");
        assert_eq!(
            (
                c.caches.max_total,
                c.caches.max_total_entries,
                c.caches.max_unused
            ),
            (8 << 30, 600_000, Duration::from_secs(48 * 3600))
        );
        // Raising only max_size raises the total with it: a cache that size can be kept.
        let c = Config::from_toml_str("[caches]\nmax_size = \"64GiB\"\nmax_entries = 3000000\n")
            .expect("valid");
        assert_eq!(
            (c.caches.max_total, c.caches.max_total_entries),
            (64 << 30, 3_000_000)
        );
        let err = Config::from_toml_str(
            "[caches]\nmax_size = \"4GiB\"\nmax_total = \"1GiB\"\nmax_total_entries = 10\nmax_unused = \"0s\"\n",
        )
        .expect_err("invalid")
        .to_string();
        assert!(
            err.contains("caches.max_total: 1073741824 bytes is less than the largest cache"),
            "{err}"
        );
        assert!(
            err.contains("caches.max_total_entries: 10 is less than caches.max_entries"),
            "{err}"
        );
        assert!(
            err.contains("caches.max_unused: must be greater than zero"),
            "{err}"
        );
    }

    #[test]
    fn host_addresses_are_plain_ip_addresses_each_named_when_not() {
        let c = Config::from_toml_str(
            "[host]\naddresses = [\"203.0.113.7\", \"2001:db8::7\", \"::ffff:198.51.100.7\"]\n",
        )
        .expect("valid");
        assert_eq!(
            c.host.addresses,
            [
                "203.0.113.7".parse::<std::net::IpAddr>().unwrap(),
                "2001:db8::7".parse().unwrap(),
                "198.51.100.7".parse().unwrap(),
            ]
        );
        let err = Config::from_toml_str(
            "[host]\naddresses = [\"203.0.113.0/24\", \"ci.example.com\", \"10.0.0.1\"]\n",
        )
        .expect_err("invalid")
        .to_string();
        assert!(
            err.contains("host.addresses[0]: \"203.0.113.0/24\" is not an IP address")
                && err.contains("host.addresses[1]: \"ci.example.com\" is not an IP address")
                && !err.contains("host.addresses[2]"),
            "{err}"
        );
        assert!(
            Config::from_toml_str("[host]\nnames = []\n").is_err(),
            "unknown key"
        );
    }

    #[test]
    fn every_bad_value_is_reported_by_key_path() {
        let text = r#"
builder_id = ""
[limits]
max_timeout = "6 hours"
max_memory = "16GB"
max_pids = 0
max_cpus = 0.001
max_disk = "1MiB"
job_uids = "0-65535"
isolation = "per-job"
log_cap = "0B"
[fetch]
allow_private = ["169.254.0.0/16", "localhost"]
file_roots = ["tools"]
[egress]
ceiling_trusted = ["a.*.com:443"]
audit = true
hosts = { "Mirror" = "10.0.0.1", "ok.example" = "not-an-ip" }
[paths]
state_dir = "state"
"#;
        let err = Config::from_toml_str(text).expect_err("invalid");
        let paths: Vec<&str> = err.field_errors().iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "builder_id",
                "limits.max_timeout",
                "limits.max_memory",
                "limits.max_pids",
                "limits.max_cpus",
                "limits.max_disk",
                "limits.job_uids",
                "limits.isolation",
                "limits.log_cap",
                "fetch.allow_private[0]",
                "fetch.allow_private[1]",
                "fetch.file_roots[0]",
                "egress.ceiling_trusted[0]",
                "egress.audit",
                "egress.hosts.Mirror",
                "egress.hosts.\"ok.example\"",
                "paths.state_dir",
            ]
        );
        let text = err.to_string();
        assert!(
            text.contains("limits.max_memory: \"16GB\" is not a size"),
            "{text}"
        );
        assert!(
            text.contains(
                "limits.job_uids: \"0-65535\": job uids must not include system or login users"
            ),
            "{text}"
        );
        assert!(
            text.contains("limits.isolation: unknown isolation mode \"per-job\": use \"auto\""),
            "{text}"
        );
        assert!(text.contains("metadata address 169.254.169.254"), "{text}");
        assert!(
            text.contains("egress.audit: audit mode also needs egress.allow_audit = true"),
            "{text}"
        );
    }

    #[test]
    fn isolation_modes_parse_by_their_result_json_names() {
        for (text, want) in [
            ("auto", IsolationChoice::Auto),
            ("root-per-job-uid", IsolationChoice::RootPerJobUid),
            ("subuid", IsolationChoice::Subuid),
            ("rootless-single-uid", IsolationChoice::RootlessSingleUid),
        ] {
            let config = Config::from_toml_str(&format!("[limits]\nisolation = \"{text}\"\n"))
                .expect("valid");
            assert_eq!(config.limits.isolation, want, "{text}");
        }
        let config =
            Config::from_toml_str("[limits]\njob_uids = \"100000-100009\"\n").expect("valid");
        assert_eq!(
            config.limits.root_job_uids(),
            UidRange {
                first: 100_000,
                last: 100_009
            }
        );
    }

    #[test]
    fn fetch_size_cap_and_timeout_default_to_2gib_and_10m_and_are_read() {
        let config = Config::from_toml_str("").expect("valid");
        assert_eq!(config.fetch.max_bytes, 2 << 30);
        assert_eq!(config.fetch.timeout, Duration::from_secs(600));
        let config = Config::from_toml_str("[fetch]\nmax_bytes = \"512MiB\"\ntimeout = \"90s\"\n")
            .expect("valid");
        assert_eq!(config.fetch.max_bytes, 512 << 20);
        assert_eq!(config.fetch.timeout, Duration::from_secs(90));
    }

    #[test]
    fn bad_fetch_size_cap_and_timeout_are_reported_by_key_path() {
        let text = "[fetch]\nmax_bytes = \"0B\"\ntimeout = \"ten minutes\"\n";
        let err = Config::from_toml_str(text).expect_err("invalid");
        let paths: Vec<&str> = err.field_errors().iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["fetch.max_bytes", "fetch.timeout"]);
        assert!(
            err.to_string()
                .contains("fetch.max_bytes: must be greater than zero"),
            "{err}"
        );
        let err = Config::from_toml_str("[fetch]\ntimeout = \"0s\"\nmax_bytes = \"2GB\"\n")
            .expect_err("invalid");
        let text = err.to_string();
        assert!(
            text.contains("fetch.timeout: must be greater than zero"),
            "{text}"
        );
        assert!(
            text.contains("fetch.max_bytes: \"2GB\" is not a size"),
            "{text}"
        );
        let err = Config::from_toml_str("[fetch]\nmax_byte = \"1GiB\"\n").expect_err("unknown");
        assert!(matches!(err, SpecError::Syntax { .. }), "{err}");
    }

    #[test]
    fn uid_ranges_parse_and_refuse_system_users_and_the_invalid_uid() {
        assert_eq!("1000-1000".parse::<UidRange>().map(|r| r.len()), Ok(1));
        assert_eq!(
            "200000-265535".parse::<UidRange>().map(|r| r.to_string()),
            Ok("200000-265535".to_owned())
        );
        assert!("999-2000"
            .parse::<UidRange>()
            .unwrap_err()
            .contains("system or login users"));
        assert!("0-0".parse::<UidRange>().is_err());
        assert!("5000-4000"
            .parse::<UidRange>()
            .unwrap_err()
            .contains("above the last"));
        assert!("1000-4294967295"
            .parse::<UidRange>()
            .unwrap_err()
            .contains("at most 4294967294"));
        for bad in [
            "",
            "1000",
            "1000-",
            "-1000",
            "+1000-2000",
            "1000 - 2000",
            "a-b",
        ] {
            assert!(
                bad.parse::<UidRange>()
                    .unwrap_err()
                    .contains("expected a uid range"),
                "{bad}"
            );
        }
    }
}
