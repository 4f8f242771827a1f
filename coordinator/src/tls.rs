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
//! modification time, following symlinks) changed: a renewal is served from the next
//! connection on, without a restart or a signal. A pair that fails to load then (a renewal
//! caught between writing the certificate and the key, say) is logged once and the previous
//! pair is kept, and loading is tried again when the files change again.
//!
//! Alternatives rejected: reloading on SIGHUP (one more thing an ACME client's hook must get
//! right, and the coordinator runs with systemd's `NoNewPrivileges` under its own user, so
//! the hook would need privileges to signal it); reloading on a timer (reads files every
//! minute for nothing, and a renewal still waits for the timer).
//!
//! # Limits
//!
//! The handshake must finish within the header timeout of the API (a client that connects and
//! sends nothing holds the connection no longer than one that sends no request). No client
//! certificates: runners prove themselves with their request signatures. No SNI-based choice
//! between several certificates.

use std::path::{Path, PathBuf};
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

/// What identifies a file's contents well enough to notice a replacement.
type Stamp = Option<(u64, u64, u64, std::time::SystemTime)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.len(), m.modified().ok()?))
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
            reason: format!("{e} (is it the private key of the certificate's first entry?)"),
        })
        .map(Arc::new)
}

/// The server's certificate, reloaded when its files change.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    current: Arc<CertifiedKey>,
    /// The files' stamps when `current` was read, or when a load last failed.
    stamps: (Stamp, Stamp),
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
            if stamps != state.stamps {
                // Recorded either way: a pair that failed is not read again (nor logged
                // again) until the files change once more.
                state.stamps = stamps;
                match load(&self.cert, &self.key) {
                    Ok(pair) => {
                        tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                        state.current = pair;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS certificate changed but cannot be used; serving the previous one")
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

/// The acceptor for `serve`: the pair at `cert` and `key`, read now (an error stops `serve`
/// before it listens) and again whenever the files change.
pub fn acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let stamps = (stamp(cert), stamp(key));
    let current = load(cert, key)?;
    let resolver = Reloading {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        state: Mutex::new(State {
            current,
            stamps,
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
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    /// A self-signed certificate for `name` and its key (PKCS#8), made with the system's
    /// `openssl`; `None` (the test skips, saying so) where it is not installed.
    fn self_signed(dir: &Path, stem: &str, name: &str) -> Option<(PathBuf, PathBuf)> {
        let (cert, key) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        let o = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "1", "-subj"])
            .arg(format!("/CN={name}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .ok()?;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Some((cert, key))
    }

    fn subject(pair: &CertifiedKey) -> Vec<u8> {
        pair.end_entity_cert().unwrap().as_ref().to_vec()
    }

    #[test]
    fn a_pair_that_does_not_belong_together_or_cannot_be_read_is_refused_naming_the_file() {
        let dir = TempDir::new("tls-bad");
        let (Some((cert_a, key_a)), Some((_, key_b))) = (
            self_signed(dir.path(), "a", "a.test"),
            self_signed(dir.path(), "b", "b.test"),
        ) else {
            eprintln!("SKIPPED: openssl is not installed (.ci/run installs it)");
            return;
        };
        assert!(load(&cert_a, &key_a).is_ok());
        let e = load(&cert_a, &key_b).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("--tls-key {}: ", key_b.display()))
                && e.contains("private key of the certificate"),
            "{e}"
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
        let dir = TempDir::new("tls-reload");
        let (Some((cert, key)), Some((cert_new, key_new))) = (
            self_signed(dir.path(), "live", "a.test"),
            self_signed(dir.path(), "next", "b.test"),
        ) else {
            eprintln!("SKIPPED: openssl is not installed (.ci/run installs it)");
            return;
        };
        let first = load(&cert, &key).unwrap();
        let r = Reloading {
            cert: cert.clone(),
            key: key.clone(),
            state: Mutex::new(State {
                current: Arc::clone(&first),
                stamps: (stamp(&cert), stamp(&key)),
                checked: Instant::now(),
            }),
        };
        let backdate = |r: &Reloading| {
            r.state.lock().unwrap().checked = Instant::now() - RECHECK;
        };
        // Unchanged files: the same pair.
        backdate(&r);
        assert_eq!(subject(&r.current()), subject(&first));
        // Half a renewal (the certificate replaced, not yet its key): kept the old pair.
        std::fs::rename(&cert_new, &cert).unwrap();
        backdate(&r);
        assert_eq!(subject(&r.current()), subject(&first));
        // The key follows: the new pair from the next check on, not before it.
        std::fs::rename(&key_new, &key).unwrap();
        assert_eq!(
            subject(&r.current()),
            subject(&first),
            "checked before RECHECK"
        );
        backdate(&r);
        let renewed = r.current();
        assert_ne!(subject(&renewed), subject(&first));
        assert_eq!(subject(&renewed), subject(&load(&cert, &key).unwrap()));
    }
}
