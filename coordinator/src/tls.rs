//! TLS served by the coordinator itself (`serve --tls-cert FILE --tls-key FILE`).
//!
//! # Why
//!
//! Runners' requests are signed, so they stay authentic over plain HTTP; what TLS adds is
//! confidentiality (job specs, the outputs and logs runners upload, the admin token on the
//! operator's requests, identity tokens on their way to the runner) and the runner's
//! assurance that it talks to its coordinator at all before it spends a registration token.
//! Until now that took a TLS terminator in front. A small fleet should not need one: the
//! coordinator now terminates TLS itself, with rustls (the `ring` provider the runner uses
//! too), TLS 1.2 and 1.3, HTTP/1.1 only.
//!
//! # Certificates that change
//!
//! Certificates are short-lived now (ACME: 90 days and less, renewed by a client that replaces
//! the files in place or swaps a symlink). The pair is read at start (a pair that cannot be
//! read, or whose key does not match its certificate, stops `serve` there) and again, at most
//! once every [`RECHECK`], when a handshake finds either file's identity (device, inode, size,
//! modification and change times, following symlinks) changed: a renewal is served from the
//! next connection on, without a restart or a signal. A pair that fails to load then (a
//! renewal caught between writing the certificate and the key, a file not yet readable by the
//! coordinator's user, no descriptor left) is logged once per change and the previous pair
//! is kept; loading is tried again at every check until it succeeds.
//!
//! The served certificate's expiry (its `notAfter`) is kept beside it for the metrics
//! (`bulwark_coordinator_tls_certificate_expiry_timestamp_seconds`): the alert that catches
//! a renewal that keeps failing.
//!
//! Alternatives rejected: reloading on SIGHUP (one more thing an ACME client's hook must get
//! right, and the coordinator runs with systemd's `NoNewPrivileges` under its own user, so
//! the hook would need privileges to signal it); reloading on a timer (reads files every
//! minute for nothing, and a renewal still waits for the timer).
//!
//! # Limits
//!
//! The handshake must finish within the header timeout of the API, and then the request's
//! headers within that timeout again (so a client that drags both out holds a connection up to
//! twice as long as on plain HTTP). Handshakes run on the coordinator's one event-loop thread:
//! each costs a signature (about 0.1 ms with an ECDSA P-256 key, several with RSA 3072), and
//! nothing limits how many a client starts per second; use a P-256 key, and where clients are
//! not trusted, a connection rate limit in front (nftables `limit`, a load balancer's). No
//! client certificates: runners prove themselves with their request signatures. No SNI-based
//! choice between several certificates.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often, at most, a handshake checks whether the files changed.
pub const RECHECK: Duration = Duration::from_secs(1);

/// A certificate and key that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no PEM certificate.
    #[error("--tls-cert {path}: {reason}")]
    Cert {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key file could not be read or holds no PEM private key.
    #[error("--tls-key {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key is of a kind rustls cannot sign with, or is not the certificate's.
    #[error("--tls-key {path}: {reason}")]
    Pair {
        /// The key file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The TLS configuration could not be built.
    #[error("TLS: {0}")]
    Config(#[source] rustls::Error),
}

/// What identifies a file's contents well enough to notice a replacement: device, inode,
/// size, modification time and change time (a `chmod` or `chown` after a copy changes only
/// the last), in seconds and nanoseconds.
type Stamp = Option<[i64; 7]>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    let wide = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    Some([
        wide(m.dev()),
        wide(m.ino()),
        wide(m.len()),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ])
}

/// Reads the certificate chain and key at `cert` and `key` and checks they belong together.
fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: cert.to_path_buf(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err(
            "holds no PEM certificate (BEGIN CERTIFICATE)".into(),
        ));
    }
    // Never quoted back: the key's own bytes stay out of every message.
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "holds no PEM private key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
                    .into()
            }
            other => other.to_string(),
        },
    })?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, der, &provider)
        .map_err(|e| TlsError::Pair {
            path: key.to_path_buf(),
            reason: match e {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                    "not the private key of the certificate (the first in --tls-cert)".into()
                }
                other => format!("cannot be used with the certificate: {other}"),
            },
        })
        .map(Arc::new)
}

/// When `pair`'s certificate stops being valid (its `notAfter`), in seconds since the epoch;
/// 0 when it cannot be read.
fn expiry(pair: &CertifiedKey) -> u64 {
    pair.end_entity_cert()
        .ok()
        .and_then(|c| not_after(c.as_ref()))
        .unwrap_or(0)
}

/// One DER element of `input`: its tag, its contents and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The `notAfter` of an X.509 certificate in DER, in seconds since the epoch: Certificate ::=
/// SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber, signature,
/// issuer, validity SEQUENCE { notBefore, notAfter }, ... }, ... }, each time a UTCTime
/// (`YYMMDDHHMMSSZ`, years 1950 to 2049) or a GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn not_after(der: &[u8]) -> Option<u64> {
    let (0x30, cert, _) = der_element(der)? else {
        return None;
    };
    let (0x30, tbs, _) = der_element(cert)? else {
        return None;
    };
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = der_element(rest)?.2;
    }
    for _ in 0..3 {
        rest = der_element(rest)?.2; // serial number, signature algorithm, issuer
    }
    let (0x30, validity, _) = der_element(rest)? else {
        return None;
    };
    let after = der_element(validity)?.2; // past notBefore
    let (tag, time, _) = der_element(after)?;
    // Bytes, all ASCII digits, checked before anything is sliced or read as a number.
    let digits = time.strip_suffix(b"Z")?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let num = |d: &[u8]| {
        d.iter()
            .fold(0i64, |acc, &b| acc * 10 + i64::from(b - b'0'))
    };
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy = num(&digits[..2]);
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &digits[2..])
        }
        (0x18, 14) => (num(&digits[..4]), &digits[4..]),
        _ => return None,
    };
    let field = |i: usize| num(&rest[i..i + 2]);
    let (month, day, hour, minute, second) = (field(0), field(2), field(4), field(6), field(8));
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if !(1..=month_days).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Days from 1970-01-01 to the civil date (the proleptic Gregorian calendar).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second).ok()
}

/// The server's certificate, reloaded when its files change.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<State>,
    /// The served certificate's `notAfter` (seconds since the epoch; 0: unreadable).
    expiry: Arc<AtomicU64>,
}

#[derive(Debug)]
struct State {
    current: Arc<CertifiedKey>,
    /// The files' stamps when `current` was read, or when a load last failed.
    stamps: (Stamp, Stamp),
    /// The last load failed: tried again at every check, logged again only on a change.
    failing: bool,
    checked: Instant,
}

impl Reloading {
    /// The pair to present, read again first if the files changed since it was read.
    fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.checked.elapsed() >= RECHECK {
            state.checked = Instant::now();
            let stamps = (stamp(&self.cert), stamp(&self.key));
            let changed = stamps != state.stamps;
            if changed || state.failing {
                state.stamps = stamps;
                match load(&self.cert, &self.key) {
                    Ok(pair) => {
                        tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                        self.expiry.store(expiry(&pair), Ordering::Relaxed);
                        state.current = pair;
                        state.failing = false;
                    }
                    Err(e) => {
                        // Once per change of the files, not at every check.
                        if changed {
                            tracing::warn!(error = %e, "TLS certificate changed but cannot be used; serving the previous one until it can");
                        }
                        state.failing = true;
                    }
                }
            }
        }
        Arc::clone(&state.current)
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// What `serve` needs to serve TLS ([`acceptor`]).
#[derive(Clone)]
pub struct Served {
    /// Accepts connections with the pair currently served.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// The served certificate's `notAfter` (seconds since the epoch; 0: unreadable), kept up
    /// to date as it is reloaded.
    pub expiry: Arc<AtomicU64>,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("expiry", &self.expiry)
            .finish_non_exhaustive()
    }
}

/// The acceptor for `serve`: the pair at `cert` and `key`, read now (an error stops `serve`
/// before it listens) and again whenever the files change.
pub fn acceptor(cert: &Path, key: &Path) -> Result<Served, TlsError> {
    let stamps = (stamp(cert), stamp(key));
    let current = load(cert, key)?;
    let expiry = Arc::new(AtomicU64::new(expiry(&current)));
    let resolver = Reloading {
        expiry: Arc::clone(&expiry),
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        state: Mutex::new(State {
            current,
            stamps,
            failing: false,
            checked: Instant::now(),
        }),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(TlsError::Config)?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Served {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        expiry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{self_signed, TempDir};

    type Pair = (PathBuf, PathBuf);

    /// Two self-signed pairs (`a.test`, `b.test`) in a fresh directory; `None`, having said
    /// the test is skipped, where openssl is not installed.
    fn two_pairs(tag: &str) -> Option<(TempDir, Pair, Pair)> {
        let dir = TempDir::new(tag);
        match (
            self_signed(dir.path(), "a", "a.test"),
            self_signed(dir.path(), "b", "b.test"),
        ) {
            (Some(a), Some(b)) => Some((dir, a, b)),
            _ => {
                eprintln!("SKIPPED: openssl is not installed (.ci/run installs it)");
                None
            }
        }
    }

    /// A resolver serving `current` for the pair at `(cert, key)`, as a check that found
    /// the files as they are now left it (`failing`: that check failed to load them).
    fn reloading((cert, key): &Pair, current: &Arc<CertifiedKey>, failing: bool) -> Reloading {
        Reloading {
            expiry: Arc::new(AtomicU64::new(expiry(current))),
            cert: cert.clone(),
            key: key.clone(),
            state: Mutex::new(State {
                current: Arc::clone(current),
                stamps: (stamp(cert), stamp(key)),
                failing,
                checked: Instant::now(),
            }),
        }
    }

    /// Lets the next handshake check the files.
    fn backdate(r: &Reloading) {
        r.state.lock().unwrap().checked = Instant::now() - RECHECK;
    }

    /// Makes the next handshakes skip the check, however slowly the test runs.
    fn postpone(r: &Reloading) {
        r.state.lock().unwrap().checked = Instant::now() + Duration::from_secs(3600);
    }

    fn subject(pair: &CertifiedKey) -> Vec<u8> {
        pair.end_entity_cert().unwrap().as_ref().to_vec()
    }

    /// What openssl says of the certificate's `notAfter`, in seconds since the epoch.
    fn openssl_not_after(cert: &Path) -> u64 {
        let o = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-enddate", "-dateopt", "iso_8601", "-in"])
            .arg(cert)
            .output()
            .unwrap();
        // notAfter=2026-11-28 16:54:19Z
        let text = String::from_utf8(o.stdout).unwrap();
        let t = text.trim().strip_prefix("notAfter=").unwrap();
        let g = format!(
            "{}{}{}{}{}{}Z",
            &t[0..4],
            &t[5..7],
            &t[8..10],
            &t[11..13],
            &t[14..16],
            &t[17..19]
        );
        // Through the DER reader's own date arithmetic, checked below on fixed dates.
        let mut der = vec![0x18, g.len() as u8];
        der.extend_from_slice(g.as_bytes());
        time_of(&der).unwrap()
    }

    /// [`not_after`]'s time reading on its own: a validity with these two times.
    fn time_of(time: &[u8]) -> Option<u64> {
        let mut validity = vec![0x17, 13];
        validity.extend_from_slice(b"700101000000Z");
        validity.extend_from_slice(time);
        let seq = |tag: u8, body: &[u8]| {
            let mut v = vec![tag, body.len() as u8];
            v.extend_from_slice(body);
            v
        };
        let mut tbs = seq(0xa0, &seq(0x02, &[2]));
        tbs.extend(seq(0x02, &[1]));
        tbs.extend(seq(0x30, &[]));
        tbs.extend(seq(0x30, &[]));
        tbs.extend(seq(0x30, &validity));
        not_after(&seq(0x30, &seq(0x30, &tbs)))
    }

    #[test]
    fn the_expiry_is_read_from_the_certificate_as_openssl_reads_it() {
        // Fixed dates: the epoch, a leap day, UTCTime's century rule, GeneralizedTime.
        assert_eq!(time_of(b"\x17\x0d700101000000Z"), Some(0));
        assert_eq!(time_of(b"\x17\x0d240229120000Z"), Some(1_709_208_000));
        assert_eq!(time_of(b"\x17\x0d491231235959Z"), Some(2_524_607_999));
        // 1950, before the epoch: not a time the gauge can show.
        assert_eq!(time_of(b"\x17\x0d500101000000Z"), None);
        assert_eq!(time_of(b"\x18\x0f20500101000000Z"), Some(2_524_608_000));
        // Malformed times and structures read as nothing, never a wrong date or a panic.
        for bad in [
            &b"\x17\x0d2402291200Z0Z"[..],
            b"\x17\x0d241329120000Z",
            b"\x17\x0c24022912000Z",
            b"\x18\x0f2024022912000+Z",
            b"\x05\x00",
            b"\x17\xff",
            // Non-ASCII bytes where the digits go (a panic when sliced as text), a sign in
            // the year, a day the month does not have, February 29th of a common year.
            b"\x17\x0d0\xc3\xa9000000000Z",
            b"\x18\x0f000\xc3\xa9000000000Z",
            b"\x17\x0d+50101000000Z",
            b"\x17\x0d240231000000Z",
            b"\x17\x0d230229000000Z",
        ] {
            assert_eq!(time_of(bad), None, "{bad:?}");
        }
        assert_eq!(not_after(b""), None);
        assert_eq!(not_after(b"\x30\x84\xff\xff\xff\xff"), None);
        let Some((_dir, (cert, key), _)) = two_pairs("tls-expiry") else {
            return;
        };
        let pair = load(&cert, &key).unwrap();
        assert_eq!(expiry(&pair), openssl_not_after(&cert));
    }

    #[test]
    fn a_pair_that_does_not_belong_together_or_cannot_be_read_is_refused_naming_the_file() {
        let Some((dir, (cert_a, key_a), (_, key_b))) = two_pairs("tls-bad") else {
            return;
        };
        assert!(load(&cert_a, &key_a).is_ok());
        let e = load(&cert_a, &key_b).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "--tls-key {}: not the private key of the certificate (the first in --tls-cert)",
                key_b.display()
            )
        );
        // A key file given as the certificate, a certificate as the key, a missing file.
        let e = load(&key_a, &key_a).unwrap_err().to_string();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let e = load(&cert_a, &cert_a).unwrap_err().to_string();
        assert!(e.contains("holds no PEM private key"), "{e}");
        let key_text = std::fs::read_to_string(&key_a).unwrap();
        assert!(!e.contains(key_text.lines().nth(1).unwrap()), "{e}");
        let e = load(&dir.path().join("none.crt"), &key_a)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--tls-cert "), "{e}");
    }

    #[test]
    fn a_renewed_pair_is_served_once_the_files_change_and_a_broken_one_keeps_the_old() {
        let Some((dir, live, (cert_new, key_new))) = two_pairs("tls-reload") else {
            return;
        };
        let (cert, key) = live.clone();
        let first = load(&cert, &key).unwrap();
        let r = reloading(&live, &first, false);
        // Unchanged files: the same pair.
        backdate(&r);
        assert_eq!(subject(&r.current()), subject(&first));
        // Half a renewal (the certificate replaced, not yet its key): kept the old pair.
        std::fs::rename(&cert_new, &cert).unwrap();
        backdate(&r);
        assert_eq!(subject(&r.current()), subject(&first));
        // The key follows: the new pair from the next check on, not before it.
        postpone(&r);
        std::fs::rename(&key_new, &key).unwrap();
        assert_eq!(
            subject(&r.current()),
            subject(&first),
            "checked before RECHECK"
        );
        backdate(&r);
        // The expiry is stored with each pair loaded (a sentinel first: both pairs were made
        // in the same second, so their expiries may be equal).
        r.expiry.store(7, Ordering::Relaxed);
        let renewed = r.current();
        assert_ne!(subject(&renewed), subject(&first));
        assert_eq!(subject(&renewed), subject(&load(&cert, &key).unwrap()));
        assert_eq!(r.expiry.load(Ordering::Relaxed), expiry(&renewed));
        assert!(expiry(&renewed) > 0);
        // A renewal whose key cannot be read at first (a copy, then a chmod for the
        // coordinator's user; root reads through any mode, so a directory stands in for the
        // unreadable key here): the renewed pair is kept, then the next one is loaded at a
        // later check once it can be read, whichever of the file's times moved.
        let Some((cert3, key3)) = self_signed(dir.path(), "third", "c.test") else {
            return;
        };
        std::fs::rename(&cert3, &cert).unwrap();
        std::fs::remove_file(&key).unwrap();
        std::fs::create_dir(&key).unwrap();
        r.expiry.store(7, Ordering::Relaxed);
        backdate(&r);
        assert_eq!(subject(&r.current()), subject(&renewed));
        assert!(r.state.lock().unwrap().failing);
        // A failed load leaves the expiry of what is still served.
        assert_eq!(r.expiry.load(Ordering::Relaxed), 7);
        std::fs::remove_dir(&key).unwrap();
        std::fs::rename(&key3, &key).unwrap();
        backdate(&r);
        let third = r.current();
        assert_eq!(subject(&third), subject(&load(&cert, &key).unwrap()));
        assert!(!r.state.lock().unwrap().failing);
    }

    /// A failed load is tried again at every check, not only when the files change: what
    /// made it fail may pass without touching them (no descriptor left at that moment).
    #[test]
    fn a_pair_that_failed_to_load_is_tried_again_without_a_further_change() {
        let Some((_dir, live, (cert_new, key_new))) = two_pairs("tls-retry") else {
            return;
        };
        let (cert, key) = live.clone();
        let first = load(&cert, &key).unwrap();
        std::fs::rename(&cert_new, &cert).unwrap();
        std::fs::rename(&key_new, &key).unwrap();
        // As a check that failed on these very files left it: their stamps recorded.
        let r = reloading(&live, &first, true);
        backdate(&r);
        let now = r.current();
        assert_eq!(subject(&now), subject(&load(&cert, &key).unwrap()));
        assert_ne!(subject(&now), subject(&first));
        assert!(!r.state.lock().unwrap().failing);
    }
}
