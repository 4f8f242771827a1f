//! Downloads for the runner itself: tools, root filesystems, source tarballs.
//!
//! One blocking `reqwest` client per download, with rustls (ring provider) and the system's
//! CA roots through `rustls-platform-verifier`, plus the operator's `fetch.extra_ca`. The
//! client never uses a proxy from the environment, never decompresses bodies, sends no
//! `Referer`, never retries, and resolves names only through [`PolicyResolver`], which hands the
//! connector nothing but addresses that pass [`AddressPolicy`]. URLs whose host is an IP
//! literal skip the resolver, so they are checked here before the request and again in the
//! redirect policy, which also refuses `file:` targets, https to http downgrades, credentials
//! and more than [`MAX_REDIRECTS`] hops. The body is streamed into a file while being hashed
//! (one pass), capped at `fetch.max_bytes` and bounded by `fetch.timeout` from connect to the
//! last byte.
//!
//! `file://` URLs are served only from under `fetch.file_roots`: the path is canonicalized,
//! must then lie under a canonicalized root, and is opened from the root one component at a
//! time with `O_NOFOLLOW`, so a symlink swapped in after the check is refused rather than
//! followed.
//!
//! Alternatives rejected: the async client (the store is called from synchronous code and a
//! download is one sequential stream; the blocking client runs its own small runtime); the
//! `native-tls` backend (links the system OpenSSL, whose version differs per host); the
//! `aws-lc-rs` provider (needs cmake here); `webpki-roots` (a CA list frozen into the binary
//! that the operator cannot update with the system's); downloading then hashing in a second
//! pass (twice the I/O, and the file would exist unverified for longer).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulwark_protocol::{format_duration, format_size, Config, IpNet};
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use reqwest::Url;
use sha2::{Digest, Sha256};

use super::address::{AddressPolicy, AddressRefused};

/// Most redirects one download follows.
pub const MAX_REDIRECTS: usize = 5;

const BUF_SIZE: usize = 256 * 1024;

/// What the runner may fetch from, and how much. Built from the operator's `[fetch]` with
/// [`FetchPolicy::from_config`]; tests build it directly (`..FetchPolicy::default()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPolicy {
    /// Loopback/private/link-local networks that may be connected to (never metadata).
    pub allow_private: Vec<IpNet>,
    /// Addresses of this host beside its interfaces' (`host.addresses`), refused unless
    /// `allow_private` names them exactly (a /32 or /128 entry).
    pub host_addresses: Vec<std::net::IpAddr>,
    /// Directories `file://` URLs may point into; empty: no `file://` at all.
    pub file_roots: Vec<PathBuf>,
    /// PEM bundle trusted in addition to the system roots.
    pub extra_ca: Option<PathBuf>,
    /// Largest download in bytes (`fetch.max_bytes`).
    pub max_bytes: u64,
    /// Longest one download may take, connect to last byte (`fetch.timeout`); unpacking it
    /// may take as long again.
    pub timeout: Duration,
    /// What the download and what it unpacks to may still add to the store's filesystem
    /// before it falls below `limits.min_free_disk` (the job sets it before each fetch).
    pub room: crate::disk_reserve::Room,
    /// When everything one job fetches (its tools, root filesystem and url source together)
    /// must be in, waits for another process's fetch included; `None`: each download and
    /// unpack has `timeout` alone. The job sets it to its own timeout (or `timeout`, when
    /// longer) from when it starts fetching: each input alone is bounded by `timeout`, but a
    /// spec may name 64 tools.
    pub deadline: Option<Instant>,
}

impl Default for FetchPolicy {
    /// Nothing private, no `file://`, no extra CA, the default cap (2 GiB) and timeout (10m).
    fn default() -> Self {
        FetchPolicy {
            allow_private: Vec::new(),
            host_addresses: Vec::new(),
            file_roots: Vec::new(),
            extra_ca: None,
            max_bytes: bulwark_protocol::DEFAULT_FETCH_MAX_BYTES,
            timeout: bulwark_protocol::DEFAULT_FETCH_TIMEOUT,
            room: crate::disk_reserve::Room::default(),
            deadline: None,
        }
    }
}

impl FetchPolicy {
    /// From a checked configuration (`Config::from_toml_str` has validated every entry, so an
    /// error here means the value was built by hand).
    pub fn from_config(config: &Config) -> Result<FetchPolicy, FetchError> {
        let fetch = &config.fetch;
        let allow_private = fetch
            .allow_private
            .iter()
            .map(|entry| IpNet::parse(entry).map_err(FetchError::Config))
            .collect::<Result<_, _>>()?;
        Ok(FetchPolicy {
            allow_private,
            host_addresses: config.host.addresses.clone(),
            file_roots: fetch.file_roots.iter().map(PathBuf::from).collect(),
            extra_ca: (!fetch.extra_ca.is_empty()).then(|| PathBuf::from(&fetch.extra_ca)),
            max_bytes: fetch.max_bytes,
            timeout: fetch.timeout,
            room: crate::disk_reserve::Room::default(),
            deadline: None,
        })
    }

    /// This policy with `timeout` cut to what is left before [`FetchPolicy::deadline`];
    /// `None` once nothing is left.
    pub fn within_deadline(&self) -> Option<FetchPolicy> {
        let Some(deadline) = self.deadline else {
            return Some(self.clone());
        };
        let left = deadline.saturating_duration_since(Instant::now());
        (!left.is_zero()).then(|| FetchPolicy {
            timeout: self.timeout.min(left),
            ..self.clone()
        })
    }

    /// The most one download may be, and the error for a larger one: `fetch.max_bytes`, or
    /// the room above the disk reserve when that is smaller.
    fn cap(&self) -> (u64, fn(u64) -> FetchError) {
        match self.room.bytes {
            Some(room) if room < self.max_bytes => (room, FetchError::NoRoom),
            _ => (self.max_bytes, FetchError::TooLarge),
        }
    }

    /// The address rules for one fetch, with this host's addresses as they are now.
    fn addresses(&self) -> Result<AddressPolicy, FetchError> {
        Ok(AddressPolicy {
            allow_private: self.allow_private.clone(),
            host: crate::egress::policy::host_addresses(&self.host_addresses)
                .map_err(FetchError::HostAddresses)?,
        })
    }
}

/// Why a download failed. Displayed after `tool "NAME": URL: `.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A `[fetch]` value could not be used.
    #[error("fetch configuration: {0}")]
    Config(String),
    /// This host's own addresses could not be listed, so no address can be judged.
    #[error("{0}")]
    HostAddresses(String),
    /// Not a URL.
    #[error("not a valid URL")]
    BadUrl,
    /// A scheme other than https, http, file.
    #[error("unsupported scheme {0:?}; use https, http or file")]
    Scheme(String),
    /// The URL carries a user name or password.
    #[error("URLs with a user name or password are refused; use a URL without credentials")]
    Credentials,
    /// The address rules refused the connection.
    #[error(transparent)]
    Address(#[from] AddressRefused),
    /// A [`post`] over plain `http` to an address `fetch.allow_private` does not list: what it
    /// carries (an identity token) would cross the network in the clear.
    #[error("plain http to {0} refused; use https (http only to an address fetch.allow_private lists, for tests)")]
    PlainHttp(IpAddr),
    /// A redirect the policy refuses.
    #[error("redirect to {to} refused: {reason}")]
    Redirect {
        /// Target, without credentials or query.
        to: String,
        /// Why.
        reason: &'static str,
    },
    /// The name did not resolve.
    #[error("cannot resolve {host}")]
    Resolve {
        /// The host name.
        host: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The server answered with an error status.
    #[error("HTTP {0}")]
    Status(u16),
    /// The body is larger than `fetch.max_bytes`.
    #[error("body larger than the cap of {} (fetch.max_bytes)", format_size(*.0))]
    TooLarge(u64),
    /// The body would take the store's filesystem below `limits.min_free_disk`.
    #[error("body larger than the {} left above limits.min_free_disk on the tool store's filesystem; free space there", format_size(*.0))]
    NoRoom(u64),
    /// The download took longer than `fetch.timeout`.
    #[error("timed out after {} (fetch.timeout)", format_duration(*.0))]
    Timeout(Duration),
    /// The body ended before its announced length.
    #[error("body cut off after {received} of {expected} bytes")]
    Truncated {
        /// Bytes received.
        received: u64,
        /// `Content-Length`.
        expected: u64,
    },
    /// Reading the body failed.
    #[error("body cut off after {received} bytes")]
    Body {
        /// Bytes received.
        received: u64,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Connecting or sending failed.
    #[error("request failed")]
    Request(#[source] reqwest::Error),
    /// The TLS client could not be set up.
    #[error("cannot set up the HTTP client")]
    Client(#[source] reqwest::Error),
    /// `fetch.extra_ca` could not be read or holds no certificate.
    #[error("fetch.extra_ca {path}: {reason}")]
    ExtraCa {
        /// The bundle's path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A `file://` URL that `fetch.file_roots` does not cover.
    #[error("{path} is not under fetch.file_roots{hint}", hint = if *.empty { " (which is empty: file:// URLs are off)" } else { "" })]
    FileOutsideRoots {
        /// The path asked for.
        path: PathBuf,
        /// Whether no root is configured at all.
        empty: bool,
    },
    /// A `file://` path could not be opened without following symlinks.
    #[error("cannot open {path}")]
    File {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Writing the download into the store failed.
    #[error("writing the download")]
    Write(#[source] io::Error),
}

/// A finished download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Lowercase hex sha256 of the body.
    pub sha256: String,
    /// Body size in bytes.
    pub bytes: u64,
}

/// The URL as it may appear in messages and logs: never with a user name or password.
pub fn display_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        // Not a URL the parser takes, or one it reads otherwise (`user:pw@host:path` parses
        // as scheme `user`): hide whatever could still be credentials.
        _ => bulwark_protocol::redact_url(url),
    }
}

/// Downloads `url` into `out` (a new, empty file), hashing while writing.
pub fn fetch(url: &str, policy: &FetchPolicy, out: &mut File) -> Result<Fetched, FetchError> {
    let parsed = Url::parse(url).map_err(|_| FetchError::BadUrl)?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(FetchError::Credentials);
    }
    match parsed.scheme() {
        "https" | "http" => fetch_http(parsed, policy, out),
        "file" => fetch_file(&parsed, policy, out),
        other => Err(FetchError::Scheme(other.to_owned())),
    }
}

/// The first refusal seen by the resolver or the redirect policy of one download; reqwest
/// wraps those errors in its own, so they are kept here to be reported as they are.
type Refusal = Arc<Mutex<Option<FetchError>>>;

fn record(slot: &Refusal, err: FetchError) -> io::Error {
    let text = err.to_string();
    if let Ok(mut guard) = slot.lock() {
        guard.get_or_insert(err);
    }
    io::Error::new(io::ErrorKind::PermissionDenied, text)
}

fn take(slot: &Refusal) -> Option<FetchError> {
    slot.lock().ok().and_then(|mut guard| guard.take())
}

/// Resolves names with the system resolver (on a blocking thread) and keeps only the
/// addresses [`AddressPolicy`] allows; the connector only ever sees those.
#[derive(Debug)]
struct PolicyResolver {
    addresses: AddressPolicy,
    refusal: Refusal,
    /// Plain `http` of a [`post`]: only addresses `allow_private` lists are kept.
    listed_only: bool,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let addresses = self.addresses.clone();
        let refusal = Arc::clone(&self.refusal);
        let listed_only = self.listed_only;
        Box::pin(async move {
            let lookup = host.clone();
            let found = tokio::task::spawn_blocking(move || {
                (lookup.as_str(), 0u16)
                    .to_socket_addrs()
                    .map(|it| it.collect::<Vec<SocketAddr>>())
            })
            .await
            .map_err(io::Error::other)?;
            let found = match found {
                Ok(found) => found,
                Err(source) => {
                    let text = source.to_string();
                    record(&refusal, FetchError::Resolve { host, source });
                    return Err(io::Error::other(text).into());
                }
            };
            let mut first_refusal: Option<FetchError> = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match addresses.check(a.ip()) {
                    Ok(()) if listed_only && !listed(&addresses, a.ip()) => {
                        first_refusal.get_or_insert(FetchError::PlainHttp(a.ip()));
                        false
                    }
                    Ok(()) => true,
                    Err(e) => {
                        first_refusal.get_or_insert(e.into());
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), first_refusal) {
                (true, Some(refused)) => Err(record(&refusal, refused).into()),
                _ => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

/// The redirect target without credentials or query, for messages.
fn short(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

fn check_redirect(to: &Url, previous: &[Url], addresses: &AddressPolicy) -> Result<(), FetchError> {
    let refuse = |reason| {
        Err(FetchError::Redirect {
            to: short(to),
            reason,
        })
    };
    if previous.len() > MAX_REDIRECTS {
        return refuse("more than 5 redirects");
    }
    if !matches!(to.scheme(), "https" | "http") {
        return refuse("only http and https redirects are followed");
    }
    if previous.last().is_some_and(|p| p.scheme() == "https") && to.scheme() == "http" {
        return refuse("https must not redirect to http");
    }
    if !to.username().is_empty() || to.password().is_some() {
        return refuse("the target carries credentials");
    }
    check_literal(to, addresses)
}

/// A URL whose host is an IP literal never reaches the resolver: check it here.
fn check_literal(url: &Url, addresses: &AddressPolicy) -> Result<(), FetchError> {
    let Some(ip) = literal(url) else {
        return Ok(());
    };
    addresses.check(ip).map_err(FetchError::Address)
}

/// The URL's host when it is an IP literal.
fn literal(url: &Url) -> Option<IpAddr> {
    let host = url.host_str().unwrap_or("");
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.parse::<IpAddr>().ok()
}

/// Whether `fetch.allow_private` lists `ip` itself (not merely allows it as a public address).
fn listed(addresses: &AddressPolicy, ip: IpAddr) -> bool {
    addresses.allow_private.iter().any(|net| net.contains(ip))
}

fn client(
    policy: &FetchPolicy,
    addresses: AddressPolicy,
    refusal: &Refusal,
    follow_redirects: bool,
    listed_only: bool,
) -> Result<reqwest::blocking::Client, FetchError> {
    // reqwest asks rustls for the process-wide provider; install ring unless one is already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let redirect_addresses = addresses.clone();
    let redirect_refusal = Arc::clone(refusal);
    let redirect = if follow_redirects {
        reqwest::redirect::Policy::custom(move |attempt| {
            match check_redirect(attempt.url(), attempt.previous(), &redirect_addresses) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(record(&redirect_refusal, e)),
            }
        })
    } else {
        reqwest::redirect::Policy::none()
    };
    let mut builder = reqwest::blocking::Client::builder()
        .no_proxy()
        .referer(false)
        .retry(reqwest::retry::never())
        .redirect(redirect)
        .timeout(None)
        .connect_timeout(policy.timeout)
        .user_agent(concat!("bulwark/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(PolicyResolver {
            addresses,
            refusal: Arc::clone(refusal),
            listed_only,
        }));
    if let Some(path) = &policy.extra_ca {
        let certs = ca_bundle(path).map_err(|reason| FetchError::ExtraCa {
            path: path.clone(),
            reason,
        })?;
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(FetchError::Client)
}

/// The certificates of the PEM bundle at `path` (an operator's extra certificate
/// authorities), or why they cannot be used. Parsed here rather than by reqwest, whose error
/// says only "builder error".
pub fn ca_bundle(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    use rustls::pki_types::pem::PemObject as _;
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let mut certs = Vec::new();
    for der in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        let der = der.map_err(|e| format!("not a PEM bundle: {e}"))?;
        certs.push(
            reqwest::Certificate::from_der(der.as_ref())
                .map_err(|e| format!("a certificate that cannot be read: {e}"))?,
        );
    }
    if certs.is_empty() {
        return Err("holds no PEM certificate (BEGIN CERTIFICATE)".to_owned());
    }
    Ok(certs)
}

/// Most bytes [`post`] reads of an answer.
pub const MAX_POST_ANSWER: usize = 1 << 20;

/// `POST url` with `body` under the same address rules as a download (the resolver, IP
/// literals, `fetch.extra_ca`, `fetch.timeout`), for the runner's own exchanges with services
/// (credentials): `https`, or `http` only to an address `fetch.allow_private` lists (a local
/// test service; anywhere else the token would cross the network in the clear), no redirect
/// followed (a redirect would carry the
/// body, a token, somewhere else), the answer capped at [`MAX_POST_ANSWER`]. Returns the
/// status and the body whatever the status.
pub fn post(
    url: &str,
    policy: &FetchPolicy,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), FetchError> {
    let url = Url::parse(url).map_err(|_| FetchError::BadUrl)?;
    let started = Instant::now();
    let addresses = policy.addresses()?;
    check_post_target(&url, &addresses)?;
    let plain = url.scheme() == "http";
    let refusal: Refusal = Arc::default();
    let client = client(policy, addresses, &refusal, false, plain)?;
    let classify = |e: reqwest::Error| {
        if let Some(refused) = take(&refusal) {
            refused
        } else if e.is_timeout() || started.elapsed() >= policy.timeout {
            FetchError::Timeout(policy.timeout)
        } else {
            FetchError::Request(e.without_url())
        }
    };
    let mut req = client.post(url).timeout(policy.timeout).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = req.send().map_err(classify)?;
    let status = response.status().as_u16();
    // The answer may hold issued secrets: read into a buffer that never grows (growing
    // would leave earlier parts of it in freed memory nobody zeroes).
    let mut answer = Vec::with_capacity(MAX_POST_ANSWER + 1);
    response
        .take(MAX_POST_ANSWER as u64 + 1)
        .read_to_end(&mut answer)
        .map_err(|e| FetchError::Body {
            received: 0,
            source: e,
        })?;
    if answer.len() > MAX_POST_ANSWER {
        return Err(FetchError::TooLarge(MAX_POST_ANSWER as u64));
    }
    Ok((status, answer))
}

/// What [`post`] checks before it connects: `https` or `http`, no credentials, an IP literal
/// the address rules allow, and over plain `http` only a literal `fetch.allow_private` lists
/// (a host name over `http` is held to that by the resolver).
fn check_post_target(url: &Url, addresses: &AddressPolicy) -> Result<(), FetchError> {
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FetchError::Credentials);
    }
    if !matches!(url.scheme(), "https" | "http") {
        return Err(FetchError::Scheme(url.scheme().to_string()));
    }
    check_literal(url, addresses)?;
    let plain = url.scheme() == "http";
    if let Some(ip) = literal(url).filter(|ip| plain && !listed(addresses, *ip)) {
        return Err(FetchError::PlainHttp(ip));
    }
    Ok(())
}

fn fetch_http(url: Url, policy: &FetchPolicy, out: &mut File) -> Result<Fetched, FetchError> {
    let started = Instant::now();
    let addresses = policy.addresses()?;
    check_literal(&url, &addresses)?;
    let refusal: Refusal = Arc::default();
    let client = client(policy, addresses.clone(), &refusal, true, false)?;
    let timed_out = || FetchError::Timeout(policy.timeout);
    let classify = |e: reqwest::Error| {
        if let Some(refused) = take(&refusal) {
            refused
        } else if e.is_timeout() || started.elapsed() >= policy.timeout {
            timed_out()
        } else {
            FetchError::Request(e.without_url())
        }
    };
    // The per-request timeout covers connect, redirects and the whole body.
    let mut response = client
        .get(url)
        .timeout(policy.timeout)
        .send()
        .map_err(classify)?;
    let status = response.status();
    if status.is_redirection() {
        // reqwest hands back redirects it will not follow (a `file:` Location, say)
        // without asking the policy: say why, rather than just "HTTP 302".
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| response.url().join(l).ok());
        if let Some(to) = location {
            check_redirect(&to, std::slice::from_ref(response.url()), &addresses)?;
            return Err(FetchError::Redirect {
                to: short(&to),
                reason: "not followed",
            });
        }
    }
    if !status.is_success() {
        return Err(FetchError::Status(status.as_u16()));
    }
    let expected = response.content_length();
    let (cap, too_large) = policy.cap();
    if expected.is_some_and(|n| n > cap) {
        return Err(too_large(cap));
    }
    let mut received = 0u64;
    let result = copy_hashing(&mut response, out, cap, &mut received);
    let fetched = result.map_err(|e| match e {
        CopyError::Write(e) => FetchError::Write(e),
        CopyError::TooLarge => too_large(cap),
        CopyError::Read(_) if started.elapsed() >= policy.timeout => timed_out(),
        CopyError::Read(e) if is_timeout(&e) => timed_out(),
        CopyError::Read(source) => FetchError::Body { received, source },
    })?;
    if started.elapsed() > policy.timeout {
        return Err(timed_out());
    }
    match expected {
        Some(expected) if expected != fetched.bytes => Err(FetchError::Truncated {
            received: fetched.bytes,
            expected,
        }),
        _ => Ok(fetched),
    }
}

fn is_timeout(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::TimedOut
        || e.get_ref()
            .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
            .is_some_and(reqwest::Error::is_timeout)
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
    TooLarge,
}

/// Copies `from` into `to`, hashing on the way, refusing more than `cap` bytes.
fn copy_hashing(
    from: &mut impl Read,
    to: &mut File,
    cap: u64,
    received: &mut u64,
) -> Result<Fetched, CopyError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        *received += n as u64;
        if *received > cap {
            return Err(CopyError::TooLarge);
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
    }
    to.flush().map_err(CopyError::Write)?;
    Ok(Fetched {
        sha256: crate::outputs::hex(&hasher.finalize()),
        bytes: *received,
    })
}

fn fetch_file(url: &Url, policy: &FetchPolicy, out: &mut File) -> Result<Fetched, FetchError> {
    let requested = url.to_file_path().map_err(|()| FetchError::BadUrl)?;
    let outside = |path: &Path| FetchError::FileOutsideRoots {
        path: path.to_owned(),
        empty: policy.file_roots.is_empty(),
    };
    let file_error = |path: &Path, source| FetchError::File {
        path: path.to_owned(),
        source,
    };
    if policy.file_roots.is_empty() {
        return Err(outside(&requested));
    }
    let canonical = requested
        .canonicalize()
        .map_err(|e| file_error(&requested, e))?;
    let (root, rel) = policy
        .file_roots
        .iter()
        .filter_map(|root| root.canonicalize().ok())
        .find_map(|root| {
            let rel = canonical.strip_prefix(&root).ok()?.to_owned();
            Some((root, rel))
        })
        .ok_or_else(|| outside(&requested))?;
    let file = open_beneath(&root, &rel).map_err(|e| file_error(&requested, e))?;
    let mut file = File::from(file);
    let meta = file.metadata().map_err(|e| file_error(&requested, e))?;
    if !meta.is_file() {
        let e = io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
        return Err(file_error(&requested, e));
    }
    let (cap, too_large) = policy.cap();
    if meta.len() > cap {
        return Err(too_large(cap));
    }
    let mut received = 0;
    copy_hashing(&mut file, out, cap, &mut received).map_err(|e| match e {
        CopyError::Read(e) => file_error(&requested, e),
        CopyError::Write(e) => FetchError::Write(e),
        CopyError::TooLarge => too_large(cap),
    })
}

/// Opens `root/rel` one component at a time, never following a symlink.
fn open_beneath(root: &Path, rel: &Path) -> io::Result<OwnedFd> {
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut fd: OwnedFd = File::open(root)?.into();
    let parts: Vec<_> = rel.components().collect();
    for (i, part) in parts.iter().enumerate() {
        let Component::Normal(name) = part else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "unexpected path component",
            ));
        };
        let last = i + 1 == parts.len();
        let flags = if last {
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK
        } else {
            dir_flags
        };
        fd = openat(&fd, *name, flags, Mode::empty())?;
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_url_never_shows_credentials() {
        assert_eq!(
            display_url("https://user:secret@example.org/a.tgz"),
            "https://example.org/a.tgz"
        );
        assert_eq!(
            display_url("https://example.org/a"),
            "https://example.org/a"
        );
        // Text the URL parser refuses still has its credentials hidden.
        assert_eq!(
            display_url("https://user:sec ret@example.org:notaport/a"),
            "https://***@example.org:notaport/a"
        );
        assert_eq!(display_url("user:secret@host:repo"), "***@host:repo");
    }

    #[test]
    fn redirects_to_file_downgrades_and_private_literals_are_refused() {
        let p = AddressPolicy::default();
        let https = Url::parse("https://example.org/a").expect("url");
        let check = |to: &str, prev: &[Url]| {
            check_redirect(&Url::parse(to).expect("url"), prev, &p).map_err(|e| e.to_string())
        };
        assert_eq!(
            check("file:///etc/passwd", std::slice::from_ref(&https)),
            Err("redirect to file:///etc/passwd refused: only http and https redirects are followed".to_owned())
        );
        assert_eq!(
            check("http://example.org/a?token=x", std::slice::from_ref(&https)),
            Err(
                "redirect to http://example.org/a refused: https must not redirect to http"
                    .to_owned()
            )
        );
        let err = check("https://127.0.0.1/x", std::slice::from_ref(&https)).expect_err("loopback");
        assert!(
            err.contains("connection to 127.0.0.1 refused by policy: loopback address"),
            "{err}"
        );
        let err = check(
            "https://[::ffff:169.254.169.254]/",
            std::slice::from_ref(&https),
        )
        .expect_err("metadata");
        assert!(err.contains("cloud metadata address"), "{err}");
        assert!(check("https://example.org/b", std::slice::from_ref(&https)).is_ok());
        let six = vec![https; 6];
        assert!(check("https://example.org/b", &six)
            .expect_err("too many")
            .contains("more than 5"));
    }

    #[test]
    fn unsupported_schemes_and_credentials_are_refused_before_any_io() {
        let mut out = tempfile_in_target();
        let p = FetchPolicy::default();
        let err = fetch("ftp://example.org/a", &p, &mut out).expect_err("ftp");
        assert_eq!(
            err.to_string(),
            "unsupported scheme \"ftp\"; use https, http or file"
        );
        let err = fetch("https://u:p@example.org/a", &p, &mut out).expect_err("creds");
        assert!(matches!(err, FetchError::Credentials), "{err}");
        let err = fetch("http://127.0.0.1:9/a", &p, &mut out).expect_err("loopback");
        assert!(
            err.to_string().contains("refused by policy: loopback"),
            "{err}"
        );
        let err = fetch("file:///etc/hostname", &p, &mut out).expect_err("file");
        assert_eq!(
            err.to_string(),
            "/etc/hostname is not under fetch.file_roots (which is empty: file:// URLs are off)"
        );
    }

    #[test]
    fn a_post_over_plain_http_goes_only_to_an_address_allow_private_lists() {
        // Generous: the one request that uses it goes to a loopback server and must succeed,
        // also on a loaded host.
        let p = FetchPolicy {
            timeout: Duration::from_secs(10),
            ..FetchPolicy::default()
        };
        // A public address: the token would cross the network in the clear. Refused before
        // any connection is tried (checked without connecting anywhere: a test never reaches
        // an outside address, also when the check is broken).
        for url in ["http://1.1.1.1:9/token", "http://[2606:4700::1111]:9/token"] {
            let err = check_post_target(
                &Url::parse(url).expect("url"),
                &p.addresses().expect("addresses"),
            )
            .expect_err(url);
            assert!(matches!(err, FetchError::PlainHttp(_)), "{url}: {err}");
            assert!(err.to_string().contains("use https"), "{err}");
            // The same over https passes this check (and would then connect).
            let https = url.replace("http://", "https://");
            assert!(check_post_target(
                &Url::parse(&https).expect("url"),
                &p.addresses().expect("addresses")
            )
            .is_ok());
        }
        // A loopback test service that allow_private lists is still reached over http.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let serve = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        });
        let listed = FetchPolicy {
            allow_private: vec![IpNet::parse("127.0.0.0/8").expect("net")],
            ..p
        };
        let (status, body) = post(
            &format!("http://localhost:{port}/token"),
            &listed,
            &[],
            b"x".to_vec(),
        )
        .expect("listed loopback");
        assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
        serve.join().expect("server");
    }

    /// A writable file that is already unlinked: its directory goes with the guard here.
    fn tempfile_in_target() -> File {
        let dir = crate::tools::testutil::TempDir::named("bulwark-fetch-unit");
        File::create(dir.join("out")).expect("file")
    }
}
