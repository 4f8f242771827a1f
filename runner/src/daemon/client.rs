//! The runner's HTTP client for the coordinator: every request after registration signed by
//! the runner's identity key (docs/control-plane.md, "Signed requests").
//!
//! What it refuses on its own side: a coordinator URL that is not `https://` unless its host
//! is a loopback address (job specs and identity tokens travel over it), a URL with
//! credentials, a query or a fragment, redirects (a signed request is bound to one path; a
//! redirect would only ever be a misconfiguration or an attack), environment proxies (the
//! runner talks to its coordinator directly), and answers larger than
//! [`control::MAX_BODY_BYTES`].

use std::time::Duration;

use base64::Engine;
use bulwark_protocol::control::{self, headers, ErrorBody};
use sha2::{Digest, Sha256};
use url::Url;

use crate::provenance::keys::{LocalKey, Signer};

/// How long one request may take, connect to last byte, besides its body: a request with a
/// body of `n` bytes is given [`control::body_allowance`]`(n)` more (its length at
/// [`control::MIN_BODY_RATE`], 64 KiB/s: an 8 MiB result 128 s more), as the coordinator
/// gives the body itself ([`Client::timeout_for`]). A coordinator that has no room to read a
/// large body (a result, a live-log append) answers `503` after 20 s (its `LARGE_BODY_WAIT`,
/// kept below this), which [`ClientError::is_transient`] takes for a failure worth trying
/// again: the request is sent again, signed afresh, rather than abandoned while the
/// coordinator still holds it queued.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the coordinator gives an output upload before the minimum rate applies to it:
/// an upload's timeout here is this, its length at [`control::MIN_BODY_RATE`], and
/// [`REQUEST_TIMEOUT`] for the answer, but never past the lease's end by more than
/// [`REQUEST_TIMEOUT`] and the allowed clock skew ([`Client::within_lease`]).
const UPLOAD_GRACE: Duration = control::UPLOAD_GRACE;

/// TCP keepalive on every connection to the coordinator: probes after this long without
/// traffic, every [`KEEPALIVE_INTERVAL`], [`KEEPALIVE_PROBES`] times, so a coordinator host
/// that vanished (no reset: powered off, cut off) while the daemon waits for an answer is
/// noticed in about a minute rather than at the request's timeout (for an upload, up to the
/// lease's end).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// See [`KEEPALIVE_IDLE`].
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// See [`KEEPALIVE_IDLE`].
const KEEPALIVE_PROBES: u32 = 3;

/// What went wrong talking to the coordinator. Every field is shown through [`printable`]:
/// paths name job ids the coordinator chose, and reasons may quote its answers.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configured URL is unusable.
    #[error("coordinator url {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why.
        reason: String,
    },
    /// The request never got an answer (connect, TLS, timeout). Shown as the request and the
    /// cause's whole chain, each message once ([`transport_text`]); not a `#[source]`, so an
    /// `{:#}` print does not repeat the chain.
    #[error("{}: {}", printable(what), transport_text(error))]
    Transport {
        /// The request.
        what: String,
        /// The cause.
        error: reqwest::Error,
    },
    /// The coordinator answered with an error.
    #[error(
        "{}: the coordinator answered {status}: {}",
        printable(what),
        printable(message)
    )]
    Refused {
        /// The request.
        what: String,
        /// The HTTP status.
        status: u16,
        /// Its `error` field, or a summary of a body that was not one.
        message: String,
    },
    /// The answer was not what the protocol says. Its reason may quote the coordinator (a
    /// JSON error names an unknown field verbatim): shown through [`printable`].
    #[error("{}: {}", printable(what), printable(reason))]
    Protocol {
        /// The request.
        what: String,
        /// Why.
        reason: String,
    },
    /// `[daemon] coordinator_ca` could not be read or holds no certificate.
    #[error("daemon.coordinator_ca {}: {reason}", path.display())]
    Ca {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// Signing failed (the system random source or the key).
    #[error("signing {}: {}", printable(what), printable(reason))]
    Sign {
        /// The request.
        what: String,
        /// Why.
        reason: String,
    },
}

impl ClientError {
    /// Whether trying again later may succeed: transport failures, a request the coordinator
    /// timed out (408) and server-side errors (5xx), not refusals of what was sent.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Refused { status, .. } => *status >= 500 || *status == 408,
            _ => false,
        }
    }

    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Checks a coordinator URL and returns it without a trailing slash.
pub fn check_url(raw: &str) -> Result<Url, ClientError> {
    let bad = |reason: &str| ClientError::Url {
        url: bulwark_protocol::redact_url(raw),
        reason: reason.to_string(),
    };
    let url = Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment"));
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => return Err(bad("has no host")),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => return Err(bad(
            "must be https:// (plain http only to a loopback address): job specs travel over it",
        )),
        _ => return Err(bad("must be https://")),
    }
    let mut url = url;
    let trimmed = url.path().trim_end_matches('/').to_string();
    url.set_path(&trimmed);
    Ok(url)
}

/// A client of one coordinator.
#[derive(Debug)]
pub struct Client {
    base: Url,
    http: reqwest::Client,
    /// [`REQUEST_TIMEOUT`], or a test's shorter one.
    base_timeout: Duration,
    /// How far this host's clock may be ahead of the coordinator's when a lease's end is
    /// judged by it: [`control::MAX_CLOCK_SKEW_SECS`], or a test's 0.
    clock_slack: Duration,
    /// When the coordinator last answered (seconds since the epoch; 0: not yet).
    last_answer: std::sync::atomic::AtomicU64,
}

/// An answer: its status and body (at most [`control::MAX_BODY_BYTES`]).
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl Client {
    /// A client of the coordinator at `base` (checked by [`check_url`]), trusting the
    /// certificate authorities in the PEM bundle `ca` as well as the system's.
    pub fn new(base: &str, ca: Option<&std::path::Path>) -> Result<Client, ClientError> {
        let base = check_url(base)?;
        // reqwest asks rustls for the process-wide provider; install ring unless one is.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder();
        if let Some(path) = ca {
            let ca_error = |reason: String| ClientError::Ca {
                path: path.to_path_buf(),
                reason,
            };
            let certs = crate::tools::fetch::ca_bundle(path).map_err(ca_error)?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .no_proxy()
            .referer(false)
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never())
            // Every request sets its own timeout (`timeout_for`); this one is a backstop.
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .tcp_keepalive(KEEPALIVE_IDLE)
            .tcp_keepalive_interval(KEEPALIVE_INTERVAL)
            .tcp_keepalive_retries(KEEPALIVE_PROBES)
            .user_agent(concat!("bulwark/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| match ca {
                // The CA's certificates are checked as trust anchors only now.
                Some(path) => ClientError::Ca {
                    path: path.to_path_buf(),
                    reason: format!(
                        "not usable as a certificate authority: {}",
                        std::error::Error::source(&e)
                            .map_or_else(|| e.to_string(), |s| s.to_string())
                    ),
                },
                None => ClientError::Transport {
                    what: "building the HTTP client".into(),
                    error: e,
                },
            })?;
        Ok(Client {
            base,
            http,
            base_timeout: REQUEST_TIMEOUT,
            clock_slack: Duration::from_secs(control::MAX_CLOCK_SKEW_SECS),
            last_answer: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// When the coordinator last answered a request (seconds since the epoch; 0 until it
    /// has): any answer below 500, a refusal included, and a `503` the coordinator marked as
    /// its own ([`headers::COORDINATOR`]: a busy body budget, which it answers on purpose).
    /// A 5xx without the mark may come from a proxy in front of a coordinator that is down,
    /// and any other 5xx (a `500` of a coordinator whose database fails) is a coordinator
    /// that cannot do its work: neither counts, so the liveness alert on this fires.
    pub fn last_answer(&self) -> u64 {
        self.last_answer.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The same client with `base` instead of [`REQUEST_TIMEOUT`]: a test's way to see the
    /// timeout at work without waiting 30 s.
    #[cfg(test)]
    fn with_base_timeout(mut self, base: Duration) -> Client {
        self.base_timeout = base;
        self
    }

    /// The same client judging lease ends by this host's clock exactly: a test's way to see
    /// the lease's bound without waiting out the clock-skew allowance.
    #[cfg(test)]
    fn with_clock_slack(mut self, slack: Duration) -> Client {
        self.clock_slack = slack;
        self
    }

    /// How long a request with a body of `len` bytes may take: [`REQUEST_TIMEOUT`] plus the
    /// body's length at [`control::MIN_BODY_RATE`].
    pub fn timeout_for(&self, len: usize) -> Duration {
        self.base_timeout + control::body_allowance(len as u64)
    }

    /// `timeout`, cut to end [`REQUEST_TIMEOUT`] after the lease ending at `lease_end`
    /// (seconds since the epoch, [`control::Lease::expires_at`]): after the lease the
    /// coordinator stores no output and records no result, so waiting longer for a
    /// coordinator that went away only holds the daemon's job slot. Judged by this host's
    /// clock, which may be ahead of the coordinator's by up to
    /// [`control::MAX_CLOCK_SKEW_SECS`] (a runner's requests are refused beyond that): that
    /// much is allowed on top, so a request the coordinator would still take is never cut.
    pub fn within_lease(&self, timeout: Duration, lease_end: u64) -> Duration {
        let left = Duration::from_secs(lease_end.saturating_sub(super::now_secs()));
        timeout.min(left + self.clock_slack + self.base_timeout)
    }

    /// The coordinator's URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// `POST path` with a JSON body and no signature (registration only).
    pub async fn post_unsigned(&self, path: &str, body: Vec<u8>) -> Result<Answer, ClientError> {
        let req = self
            .http
            .post(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(self.timeout_for(body.len()))
            .body(body);
        self.send("POST", path, req).await
    }

    /// `POST path` with a JSON body, signed as `runner_id` with `key`.
    pub async fn post_signed(
        &self,
        path: &str,
        body: Vec<u8>,
        runner_id: &str,
        key: &LocalKey,
    ) -> Result<Answer, ClientError> {
        self.post_signed_until(path, body, runner_id, key, None)
            .await
    }

    /// [`Client::post_signed`] for a request made under a lease ending at `lease_end` (a
    /// result report): its timeout ends at the latest [`REQUEST_TIMEOUT`] and the allowed
    /// clock skew after the lease ([`Client::within_lease`]).
    pub async fn post_signed_in_lease(
        &self,
        path: &str,
        body: Vec<u8>,
        runner_id: &str,
        key: &LocalKey,
        lease_end: u64,
    ) -> Result<Answer, ClientError> {
        self.post_signed_until(path, body, runner_id, key, Some(lease_end))
            .await
    }

    /// The two above: within the lease ending at `lease_end`, when given.
    async fn post_signed_until(
        &self,
        path: &str,
        body: Vec<u8>,
        runner_id: &str,
        key: &LocalKey,
        lease_end: Option<u64>,
    ) -> Result<Answer, ClientError> {
        let req = self.http.post(self.url(path));
        self.send_signed(
            req,
            "POST",
            path,
            "application/json",
            body,
            runner_id,
            key,
            lease_end,
        )
        .await
    }

    /// `PUT path` with `body` as bytes, signed as `runner_id` with `key`.
    pub async fn put_signed(
        &self,
        path: &str,
        body: Vec<u8>,
        runner_id: &str,
        key: &LocalKey,
    ) -> Result<Answer, ClientError> {
        let req = self.http.put(self.url(path));
        self.send_signed(
            req,
            "PUT",
            path,
            "application/octet-stream",
            body,
            runner_id,
            key,
            None,
        )
        .await
    }

    /// Sends a signed request with `body`, within [`Client::timeout_for`] its length, and
    /// when `lease_end` is given, within the lease ([`Client::within_lease`]).
    #[allow(clippy::too_many_arguments)] // the request, what is signed, by whom, until when
    async fn send_signed(
        &self,
        req: reqwest::RequestBuilder,
        method: &str,
        path: &str,
        content_type: &'static str,
        body: Vec<u8>,
        runner_id: &str,
        key: &LocalKey,
        lease_end: Option<u64>,
    ) -> Result<Answer, ClientError> {
        let digest = crate::outputs::hex(&Sha256::digest(&body));
        let mut timeout = self.timeout_for(body.len());
        if let Some(end) = lease_end {
            timeout = self.within_lease(timeout, end);
        }
        let req = self
            .sign(req, method, path, &digest, runner_id, key)?
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .timeout(timeout)
            .body(body);
        self.send(method, path, req).await
    }

    /// `PUT path` with the `len` bytes of `file` as the body, streamed, signed as `runner_id`
    /// with `key` over `sha256` (the hash of those bytes, which the coordinator holds them
    /// to), under a lease ending at `lease_end`. The request may take longer than the
    /// coordinator lets an upload take (120 s plus `len` bytes at [`control::MIN_BODY_RATE`])
    /// by [`REQUEST_TIMEOUT`], but never longer than [`REQUEST_TIMEOUT`] and the allowed clock
    /// skew past the lease's end ([`Client::within_lease`]): a 4 GiB output would otherwise be waited for 18 hours by
    /// a daemon whose coordinator went away once the body was sent.
    #[allow(clippy::too_many_arguments)] // what, where from, its size and hash, who signs, until
    pub async fn put_signed_file(
        &self,
        path: &str,
        file: std::fs::File,
        len: u64,
        sha256: &str,
        runner_id: &str,
        key: &LocalKey,
        lease_end: u64,
    ) -> Result<Answer, ClientError> {
        // The coordinator's deadline plus room for its answer: a retry must not start while
        // the first attempt may still be stored (it would count twice). After the lease
        // nothing is stored, so the wait ends then.
        let timeout = self.within_lease(
            UPLOAD_GRACE + control::body_allowance(len) + self.base_timeout,
            lease_end,
        );
        let req = self
            .sign(
                self.http.put(self.url(path)),
                "PUT",
                path,
                sha256,
                runner_id,
                key,
            )?
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .timeout(timeout)
            .body(reqwest::Body::wrap(FileBody::spawn(file, len)));
        self.send("PUT", path, req).await
    }

    /// Adds the signing headers for `method path` with a body hashing to `digest`, and the
    /// digest itself ([`headers::CONTENT_SHA256`]): with it the coordinator checks the
    /// signature before it reads the body, and it reads a body over 64 KiB (a result, a live
    /// log append) from no request without it, nor leases a job to one. A coordinator that
    /// predates the header ignores it.
    fn sign(
        &self,
        req: reqwest::RequestBuilder,
        method: &str,
        path: &str,
        digest: &str,
        runner_id: &str,
        key: &LocalKey,
    ) -> Result<reqwest::RequestBuilder, ClientError> {
        let sign_err = |reason: String| ClientError::Sign {
            what: path.to_string(),
            reason,
        };
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| sign_err("the system clock is before 1970".into()))?
            .as_secs();
        let mut raw = [0u8; 18];
        getrandom::fill(&mut raw).map_err(|e| sign_err(format!("no random nonce: {e}")))?;
        let nonce = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let input = control::signing_input(method, path, timestamp, &nonce, runner_id, digest)
            .ok_or_else(|| sign_err("a field holds a line break".into()))?;
        let signature = key.sign(&input).map_err(|e| sign_err(format!("{e:#}")))?;
        Ok(req
            .header(headers::RUNNER, runner_id)
            .header(headers::TIMESTAMP, timestamp.to_string())
            .header(headers::NONCE, nonce)
            .header(
                headers::SIGNATURE,
                base64::engine::general_purpose::STANDARD.encode(signature),
            )
            .header(headers::CONTENT_SHA256, digest))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.as_str().trim_end_matches('/'))
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<Answer, ClientError> {
        let transport = |e: reqwest::Error| ClientError::Transport {
            what: format!("{method} {path}"),
            error: e.without_url(),
        };
        let mut resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        // Of the 5xx, only the coordinator's own `503` (a busy body budget, answered on
        // purpose) counts: a proxy in front of a coordinator that is down answers 502, 503 or
        // 504 without its mark, and a coordinator answering `500` to everything (its database
        // failing) is not doing its work.
        let marked = resp.headers().contains_key(headers::COORDINATOR);
        if status < 500 || (status == 503 && marked) {
            self.last_answer
                .fetch_max(super::now_secs(), std::sync::atomic::Ordering::Relaxed);
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > control::MAX_BODY_BYTES {
                return Err(ClientError::Protocol {
                    what: format!("{method} {path}"),
                    reason: format!("answer larger than {} bytes", control::MAX_BODY_BYTES),
                });
            }
            body.extend_from_slice(&chunk);
        }
        if (200..300).contains(&status) {
            return Ok(Answer { status, body });
        }
        let message = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => printable(&e.error),
            Err(_) => format!("a body that is not an error message ({} bytes)", body.len()),
        };
        Err(ClientError::Refused {
            what: format!("{method} {path}"),
            status,
            message,
        })
    }
}

/// A request body read from a file on the blocking pool, a chunk at a time, through a short
/// queue: a slow coordinator holds the reader back instead of filling memory. Ends with an
/// error if the file turns out shorter than `len`.
#[derive(Debug)]
struct FileBody {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    len: u64,
}

impl FileBody {
    fn spawn(mut file: std::fs::File, len: u64) -> FileBody {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut left = len;
            while left > 0 {
                let mut buf = vec![0u8; 256 << 10];
                let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
                let chunk = match file.read(&mut buf[..want]) {
                    Ok(0) => Err(std::io::Error::other("the file is shorter than it was")),
                    Ok(n) => {
                        buf.truncate(n);
                        left -= n as u64;
                        Ok(bytes::Bytes::from(buf))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
                let failed = chunk.is_err();
                if tx.blocking_send(chunk).is_err() || failed {
                    return;
                }
            }
        });
        FileBody { rx, len }
    }
}

impl http_body::Body for FileBody {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|next| next.map(|chunk| chunk.map(http_body::Frame::data)))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len)
    }
}

/// An error and its causes as one line, `a: b: c`, a message that repeats the one before it
/// (reqwest and hyper both say "error sending request") or is already part of it left out;
/// for a certificate the system does not trust, what to configure.
pub fn transport_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    let text = parts.join(": ");
    let hint = if text.contains("certificate") {
        "; if the coordinator's certificate comes from a private CA, name that CA's PEM \
         bundle in [daemon] coordinator_ca in this host's configuration \
         (docs/control-plane.md, \"TLS\")"
    } else {
        ""
    };
    format!("{}{hint}", printable(&text))
}

/// A coordinator's (or a token service's) message made safe for a terminal and a log: at most
/// 500 characters, escaped by `bulwark_protocol::terminal::escape` (control characters and
/// the marks that hide or reorder text), as everything the runner prints of others' text.
pub fn printable(s: &str) -> String {
    let head: String = s.chars().take(500).collect();
    let more = if s.chars().nth(500).is_some() {
        "…"
    } else {
        ""
    };
    format!("{}{more}", bulwark_protocol::terminal::escape(&head))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[daemon] coordinator_ca` errors name the setting and the file and say what is wrong
    /// with it, rather than reqwest's "builder error".
    #[test]
    fn a_coordinator_ca_that_is_missing_empty_or_not_pem_is_refused_saying_why() {
        let dir = crate::tools::testutil::TempDir::new("coordinator-ca");
        let missing = dir.path().join("none.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for (path, why) in [
            (&missing, "No such file"),
            (&empty, "holds no PEM certificate"),
            (&broken, "not a PEM bundle"),
        ] {
            let e = Client::new("https://ci.example.com", Some(path))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("daemon.coordinator_ca {}: ", path.display()))
                    && e.contains(why),
                "{e}"
            );
        }
        assert!(Client::new("https://ci.example.com", None).is_ok());
    }

    #[test]
    fn a_coordinator_url_must_be_https_unless_it_is_loopback() {
        assert!(check_url("https://ci.example.com/").is_ok());
        assert_eq!(
            check_url("https://ci.example.com/bulwark/")
                .unwrap()
                .as_str(),
            "https://ci.example.com/bulwark"
        );
        assert!(check_url("http://127.0.0.1:8080").is_ok());
        assert!(check_url("http://[::1]:8080").is_ok());
        assert!(check_url("http://localhost:8080").is_ok());
        for (bad, why) in [
            ("http://ci.example.com", "must be https://"),
            ("http://10.0.0.1", "must be https://"),
            ("ftp://ci.example.com", "must be https://"),
            ("https://user:pw@ci.example.com", "credentials"),
            ("https://ci.example.com/?a=b", "query"),
            ("not a url", "relative URL"),
        ] {
            let e = check_url(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains("pw@"), "{e}");
        }
    }

    #[test]
    fn every_client_error_is_printable_whatever_the_coordinator_sent() {
        // A lease whose JSON names an unknown field: serde quotes it verbatim.
        let e =
            serde_json::from_str::<control::Lease>("{\"\\u001b]0;owned\\u0007\": 1}").unwrap_err();
        let errors = [
            ClientError::Protocol {
                what: "POST /v1/jobs/\u{1b}[2J/result".into(),
                reason: format!("the lease is not a job: {e}"),
            },
            ClientError::Refused {
                what: "POST /v1/jobs/\u{202e}x/result".into(),
                status: 403,
                message: "m".into(),
            },
            ClientError::Sign {
                what: "/v1/jobs/\u{7}".into(),
                reason: "r\u{1b}".into(),
            },
        ];
        for e in errors {
            let shown = e.to_string();
            assert!(
                !shown.chars().any(|c| c.is_control() || c == '\u{202e}'),
                "{shown:?}"
            );
        }
    }

    const NO_CONTENT: &str = "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n";

    /// A coordinator on loopback that answers `count` requests `204`, one per connection,
    /// and hands back each request's head and body.
    fn capture(count: usize) -> (String, std::sync::mpsc::Receiver<(String, Vec<u8>)>) {
        capture_answering(vec![NO_CONTENT.to_owned(); count])
    }

    /// [`capture`], answering each request with the next of `answers` (whole HTTP answers).
    fn capture_answering(
        answers: Vec<String>,
    ) -> (String, std::sync::mpsc::Receiver<(String, Vec<u8>)>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for answer in answers {
                let (mut s, _) = listener.accept().unwrap();
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                let (head, len) = loop {
                    let n = s.read(&mut buf).unwrap();
                    assert!(n > 0, "the request ended early");
                    seen.extend_from_slice(&buf[..n]);
                    if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).into_owned();
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length").then_some(v)
                            })
                            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                        seen.drain(..end + 4);
                        break (head, len);
                    }
                };
                while seen.len() < len {
                    let n = s.read(&mut buf).unwrap();
                    assert!(n > 0, "the body ended early");
                    seen.extend_from_slice(&buf[..n]);
                }
                s.write_all(answer.as_bytes()).unwrap();
                tx.send((head, seen)).unwrap();
            }
        });
        (url, rx)
    }

    /// Every signed request names its body's sha256 in `bulwark-content-sha256`, and that is
    /// the digest its signature covers: the coordinator checks the signature against it before
    /// reading the body, and refuses a large body without it.
    #[test]
    fn every_signed_request_sends_the_digest_its_signature_covers() {
        use crate::provenance::keys::Algorithm;
        let key = LocalKey::generate(Algorithm::P256).unwrap();
        let (url, heads) = capture(3);
        let client = Client::new(&url, None).unwrap();
        let dir = crate::tools::testutil::TempDir::new("signed-digest");
        let file_bytes = b"an output's bytes".to_vec();
        let file_path = dir.path().join("out");
        std::fs::write(&file_path, &file_bytes).unwrap();
        let file_sha = crate::outputs::hex(&Sha256::digest(&file_bytes));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let result = b"{\"result\":{}}".to_vec();
        let chunk = vec![b'x'; 100_000];
        let blob = format!("/v1/jobs/job-1/blobs/{file_sha}");
        rt.block_on(async {
            client
                .post_signed("/v1/jobs/job-1/result", result.clone(), "runner-1", &key)
                .await
                .unwrap();
            client
                .put_signed("/v1/jobs/job-1/live-log/0", chunk.clone(), "runner-1", &key)
                .await
                .unwrap();
            let file = std::fs::File::open(&file_path).unwrap();
            let len = file_bytes.len() as u64;
            client
                .put_signed_file(&blob, file, len, &file_sha, "runner-1", &key, u64::MAX)
                .await
                .unwrap();
        });
        for (method, path, body) in [
            ("POST", "/v1/jobs/job-1/result", &result),
            ("PUT", "/v1/jobs/job-1/live-log/0", &chunk),
            ("PUT", blob.as_str(), &file_bytes),
        ] {
            let (head, got) = heads.recv().unwrap();
            assert_eq!(&got, body, "{path}");
            let header = |name: &str| {
                head.lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                    })
                    .unwrap_or_else(|| panic!("{path}: no {name} in {head}"))
            };
            let digest = header(headers::CONTENT_SHA256);
            assert_eq!(digest, crate::outputs::hex(&Sha256::digest(body)), "{path}");
            let input = control::signing_input(
                method,
                path,
                header(headers::TIMESTAMP).parse().unwrap(),
                &header(headers::NONCE),
                "runner-1",
                &digest,
            )
            .unwrap();
            let signature = base64::engine::general_purpose::STANDARD
                .decode(header(headers::SIGNATURE))
                .unwrap();
            assert!(key.public().verify(&input, &signature), "{path}");
        }
    }

    /// A coordinator with no room to read a large body answers `503` (before this client's
    /// timeout); the daemon's report loop sends again on a transient failure, and each
    /// attempt is signed afresh: a new nonce, so the coordinator takes the retry.
    #[test]
    fn a_503_is_transient_and_two_requests_carry_different_nonces() {
        use crate::provenance::keys::Algorithm;
        let key = LocalKey::generate(Algorithm::P256).unwrap();
        let error = "{\"error\":\"request body not read: the coordinator had no room for it \
                     within 20 s (other large bodies are being read); send it again\"}";
        let busy = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{error}",
            error.len()
        );
        let (url, heads) = capture_answering(vec![busy, NO_CONTENT.to_owned()]);
        let client = Client::new(&url, None).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let report = b"{\"result\":{}}".to_vec();
        let path = "/v1/jobs/job-1/result";
        rt.block_on(async {
            let e = client
                .post_signed(path, report.clone(), "runner-1", &key)
                .await
                .unwrap_err();
            assert!(e.is_transient(), "{e}");
            assert_eq!(e.status(), Some(503));
            assert!(e.to_string().contains("send it again"), "{e}");
            client
                .post_signed(path, report.clone(), "runner-1", &key)
                .await
                .unwrap();
        });
        let nonce = |head: &str| {
            head.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case(headers::NONCE)
                        .then(|| v.trim().to_owned())
                })
                .unwrap()
        };
        let (first, _) = heads.recv().unwrap();
        let (second, body) = heads.recv().unwrap();
        assert_eq!(body, report);
        assert_ne!(nonce(&first), nonce(&second));
    }

    /// A request with a large body is given its length at the minimum rate (64 KiB/s) on top
    /// of its fixed timeout: a coordinator reading a 512 KiB result at 128 KiB/s (4 s, more
    /// than the fixed 1 s this client is given here) answers before the client gives up.
    #[test]
    fn a_large_body_over_a_slow_link_is_given_its_length_at_the_minimum_rate() {
        use crate::provenance::keys::Algorithm;
        use std::io::{Read, Write};
        let key = LocalKey::generate(Algorithm::P256).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let body = vec![b' '; 512 << 10];
        let len = body.len();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 32 << 10];
            // The head, then the body at 128 KiB/s: 32 KiB every 250 ms.
            let mut end = None;
            while end.is_none() || seen.len() < end.unwrap() + len {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "the request ended early");
                seen.extend_from_slice(&buf[..n]);
                if end.is_none() {
                    end = seen
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map(|e| e + 4);
                } else {
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
            let _ = s.write_all(NO_CONTENT.as_bytes());
        });
        let client = Client::new(&url, None)
            .unwrap()
            .with_base_timeout(Duration::from_secs(1));
        assert_eq!(
            client.timeout_for(len),
            Duration::from_secs(1) + control::body_allowance(len as u64)
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        rt.block_on(client.post_signed("/v1/jobs/job-1/result", body, "runner-1", &key))
            .unwrap_or_else(|e| panic!("gave up on a body arriving at twice the rate: {e}"));
        assert!(started.elapsed() > Duration::from_secs(2));
        server.join().unwrap();
    }

    /// A `503` counts as the coordinator's answer only when it carries the coordinator's mark
    /// (its own `503` for a busy body budget); a proxy's `503` in front of a coordinator that
    /// is down does not, nor does a marked `500` (a coordinator whose database fails answers
    /// every request so: the liveness alert must fire).
    #[test]
    fn only_a_marked_503_counts_as_the_coordinators_answer_among_the_5xx() {
        let answer = |status: &str, marked: bool| {
            let error = "{\"error\":\"busy\"}";
            let mark = if marked {
                format!("{}: 1\r\n", headers::COORDINATOR)
            } else {
                String::new()
            };
            format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{mark}\
                 content-length: {}\r\nconnection: close\r\n\r\n{error}",
                error.len()
            )
        };
        let (url, _heads) = capture_answering(vec![
            answer("503 Service Unavailable", false),
            answer("500 Internal Server Error", true),
            answer("503 Service Unavailable", true),
        ]);
        let client = Client::new(&url, None).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let e = client.post_unsigned("/v1/x", Vec::new()).await.unwrap_err();
            assert_eq!(e.status(), Some(503));
            assert_eq!(client.last_answer(), 0, "a proxy's 503 counted");
            let e = client.post_unsigned("/v1/x", Vec::new()).await.unwrap_err();
            assert_eq!(e.status(), Some(500));
            assert_eq!(client.last_answer(), 0, "a marked 500 counted");
            let e = client.post_unsigned("/v1/x", Vec::new()).await.unwrap_err();
            assert_eq!(e.status(), Some(503));
            assert!(e.is_transient());
            assert!(
                client.last_answer() > 0,
                "the coordinator's own 503 not counted"
            );
        });
    }

    /// An upload's timeout grows with its length (a 4 GiB output: about 18 hours) but ends
    /// shortly after the lease: a coordinator that took the whole body and never answers
    /// (its host gone) gives the daemon its error soon after the lease's end, when storing is
    /// impossible anyway, not at the full allowance. The result report likewise.
    #[test]
    fn an_upload_never_answered_fails_soon_after_the_lease_not_at_its_full_allowance() {
        use crate::provenance::keys::Algorithm;
        use std::io::Read;
        let key = LocalKey::generate(Algorithm::P256).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // Reads every request to its end (and past: it waits for more), never answers.
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let mut s = s.unwrap();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64 << 10];
                    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                });
            }
        });
        // A host whose clock may be ahead of the coordinator's by the allowed skew still gets
        // the whole of it before a request is cut for the lease: a lease that by this clock
        // ended 100 s ago may still be open at the coordinator.
        let skewed = Client::new(&url, None).unwrap();
        let past = super::super::now_secs() - 100;
        assert_eq!(
            skewed.within_lease(Duration::from_secs(137), past),
            Duration::from_secs(137)
        );
        assert_eq!(
            skewed.within_lease(Duration::from_secs(3600), past),
            Duration::from_secs(control::MAX_CLOCK_SKEW_SECS) + REQUEST_TIMEOUT
        );
        let client = Client::new(&url, None)
            .unwrap()
            .with_base_timeout(Duration::from_secs(1))
            .with_clock_slack(Duration::ZERO);
        let dir = crate::tools::testutil::TempDir::new("upload-lease");
        let bytes = vec![b'x'; 1 << 20];
        let path = dir.path().join("out");
        std::fs::write(&path, &bytes).unwrap();
        let sha = crate::outputs::hex(&Sha256::digest(&bytes));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Without the lease's bound: 120 s, 16 s for its length, 1 s for the answer.
        assert_eq!(
            client.within_lease(Duration::from_secs(137), u64::MAX),
            Duration::from_secs(137)
        );
        let lease_end = super::super::now_secs() + 2;
        assert!(client.within_lease(Duration::from_secs(137), lease_end) <= Duration::from_secs(3));
        let started = std::time::Instant::now();
        let e = rt
            .block_on(client.put_signed_file(
                &format!("/v1/jobs/job-1/blobs/{sha}"),
                std::fs::File::open(&path).unwrap(),
                bytes.len() as u64,
                &sha,
                "runner-1",
                &key,
                lease_end,
            ))
            .unwrap_err();
        let took = started.elapsed();
        assert!(matches!(e, ClientError::Transport { .. }), "{e}");
        assert!(took < Duration::from_secs(10), "waited {took:?}");
        let started = std::time::Instant::now();
        let e = rt
            .block_on(client.post_signed_in_lease(
                "/v1/jobs/job-1/result",
                vec![b' '; 8 << 20],
                "runner-1",
                &key,
                super::super::now_secs() + 1,
            ))
            .unwrap_err();
        let took = started.elapsed();
        assert!(matches!(e, ClientError::Transport { .. }), "{e}");
        assert!(took < Duration::from_secs(10), "waited {took:?}");
    }

    /// `error sending request: error sending request: client error (Connect): invalid peer
    /// certificate: UnknownIssuer` was what `bulwark register` printed for a private CA.
    #[test]
    fn a_transport_error_is_shown_once_and_a_certificate_error_names_coordinator_ca() {
        #[derive(Debug)]
        struct Layer(&'static str, Option<Box<Layer>>);
        impl std::fmt::Display for Layer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Layer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|l| l as _)
            }
        }
        let chain = Layer(
            "error sending request",
            Some(Box::new(Layer(
                "error sending request",
                Some(Box::new(Layer(
                    "client error (Connect)",
                    Some(Box::new(Layer(
                        "invalid peer certificate: UnknownIssuer",
                        None,
                    ))),
                ))),
            ))),
        );
        let text = transport_text(&chain);
        assert!(
            text.starts_with(
                "error sending request: client error (Connect): invalid peer certificate: UnknownIssuer; "
            ),
            "{text}"
        );
        assert!(text.contains("[daemon] coordinator_ca"), "{text}");
        let refused = Layer(
            "error sending request",
            Some(Box::new(Layer(
                "tcp connect error: Connection refused",
                None,
            ))),
        );
        assert_eq!(
            transport_text(&refused),
            "error sending request: tcp connect error: Connection refused"
        );
    }

    #[test]
    fn a_coordinators_message_is_made_printable_and_short() {
        assert_eq!(printable("no\x1b[31m\u{202e}x"), "no\\u{1b}[31m\\u{202e}x");
        assert_eq!(printable("a\u{200b}b\u{2069}"), "a\\u{200b}b\\u{2069}");
        let long = "a".repeat(600);
        assert_eq!(printable(&long).chars().count(), 501);
    }
}
