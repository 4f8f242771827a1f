//! Key material: the issuer's signing key, runner public keys, and the secret files of the
//! state directory.
//!
//! Formats follow the runner's (`runner/src/provenance/keys.rs`): the private key is PKCS#8
//! PEM, public keys are SPKI PEM, ECDSA over P-256. This crate does not depend on the runner:
//! the coordinator is deployed on its own host and needs only these few functions.
//!
//! Secret files (`issuer.key`, `admin.token`) are created with `O_EXCL` and mode 0600 from the
//! start, so there is no moment when they exist with wider permissions, and an existing one is
//! never overwritten (a second `init` by mistake would otherwise replace the issuer key and
//! invalidate every trust policy written for it). They are refused on load when group or
//! others can read them, or when they belong to another user: whoever else can read
//! `issuer.key` can mint job identity tokens.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use p256::ecdsa::{SigningKey, VerifyingKey};
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use zeroize::Zeroizing;

/// Most bytes read from a secret file (a PEM key or a token is a few hundred).
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Largest runner public key PEM accepted at registration.
pub const MAX_PUBLIC_KEY_BYTES: usize = 4096;

/// What went wrong with key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The system random source failed.
    #[error("generating the issuer key: the system random source failed")]
    Generate,
    /// Encoding a key as PEM failed.
    #[error("encoding the issuer key as PKCS#8 PEM")]
    Encode,
    /// Creating a secret file failed (it exists, or the directory is not writable).
    #[error("creating {}", path.display())]
    CreateSecret {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading a secret file failed.
    #[error("reading {}", path.display())]
    ReadSecret {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A secret file others can read.
    #[error("{}: refused: it is readable or writable by group or others (mode {mode:04o}); make it private with `chmod 600 {}`", path.display(), path.display())]
    SecretPermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A state file or directory that belongs to another user, who could read or replace it.
    /// Usually the service's own user owns it and the operator ran the command as root: the
    /// message says to run it as the owner, not to change the owner (which would lock the
    /// service out of its own state).
    #[error(
        "{}: refused: it belongs to {}, not to the user running this command (uid {me}); {}",
        path.display(),
        owner_words(*owner, owner_name.as_deref()),
        run_as_owner(*owner, *owner_gid, owner_name.as_deref())
    )]
    SecretOwner {
        /// The file or directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its group (for `setpriv` when the owner has no name).
        owner_gid: u32,
        /// The owner's user name, when the system knows one.
        owner_name: Option<String>,
        /// The effective uid of this process.
        me: u32,
    },
    /// `issuer.key` is not a P-256 PKCS#8 PEM key.
    #[error("{}: not a PKCS#8 PEM ECDSA P-256 private key", path.display())]
    ParsePrivate {
        /// The file.
        path: PathBuf,
    },
    /// A runner's public key is not a P-256 SPKI PEM key.
    #[error("public_key: not an SPKI PEM ECDSA P-256 public key")]
    ParsePublic,
    /// Signing failed.
    #[error("signing with the issuer key")]
    Sign,
}

/// The coordinator's OIDC issuer key (`issuer.key`). Its `Debug` never shows the key.
pub struct IssuerKey {
    key: SigningKey,
}

impl std::fmt::Debug for IssuerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IssuerKey(<private key redacted>)")
    }
}

impl IssuerKey {
    /// A new random key.
    pub fn generate() -> Result<IssuerKey, KeyError> {
        use p256::elliptic_curve::Generate;
        let key = SigningKey::try_generate_from_rng(&mut getrandom::SysRng)
            .map_err(|_| KeyError::Generate)?;
        Ok(IssuerKey { key })
    }

    /// The key from its 32-byte scalar (tests pin keys this way).
    pub fn from_scalar(bytes: &[u8]) -> Result<IssuerKey, KeyError> {
        let key = SigningKey::from_slice(bytes).map_err(|_| KeyError::Encode)?;
        Ok(IssuerKey { key })
    }

    /// Writes the key as PKCS#8 PEM to a new file, mode 0600, refusing an existing one.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        let pem = self
            .key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|_| KeyError::Encode)?;
        write_secret_new(path, pem.as_bytes())
    }

    /// Reads `issuer.key`, refusing a file group or others can read.
    pub fn load(path: &Path) -> Result<IssuerKey, KeyError> {
        let pem = read_secret(path)?;
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|_| KeyError::ParsePrivate {
            path: path.to_owned(),
        })?;
        Ok(IssuerKey { key })
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        *self.key.verifying_key()
    }

    /// Signs `message` (ECDSA P-256, SHA-256) and returns the raw 64-byte `r || s` a JWS
    /// carries (RFC 7518 section 3.4), not the ASN.1 DER form.
    pub fn sign_jws(&self, message: &[u8]) -> Result<[u8; 64], KeyError> {
        use p256::ecdsa::signature::Signer as _;
        let sig: p256::ecdsa::Signature = self.key.try_sign(message).map_err(|_| KeyError::Sign)?;
        let bytes = sig.to_bytes();
        let mut out = [0u8; 64];
        out.copy_from_slice(&bytes);
        Ok(out)
    }
}

/// Parses a runner's public key: SPKI PEM, ECDSA P-256, at most [`MAX_PUBLIC_KEY_BYTES`].
pub fn parse_public_key(pem: &str) -> Result<VerifyingKey, KeyError> {
    if pem.len() > MAX_PUBLIC_KEY_BYTES {
        return Err(KeyError::ParsePublic);
    }
    VerifyingKey::from_public_key_pem(pem.trim()).map_err(|_| KeyError::ParsePublic)
}

/// A public key as SPKI PEM (the normal form stored for a runner).
pub fn public_key_pem(key: &VerifyingKey) -> Result<String, KeyError> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|_| KeyError::Encode)
}

/// Verifies an ASN.1 DER ECDSA P-256 signature over `message`.
pub fn verify_der(key: &VerifyingKey, message: &[u8], signature_der: &[u8]) -> bool {
    use p256::ecdsa::signature::Verifier as _;
    p256::ecdsa::Signature::from_der(signature_der).is_ok_and(|s| key.verify(message, &s).is_ok())
}

/// Creates `path` with `O_EXCL` and mode 0600 and writes `bytes` to it, fsynced.
pub fn write_secret_new(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let err = |source| KeyError::CreateSecret {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW) // never through a planted symlink
        .open(path)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)
}

/// Refuses a file that does not belong to the effective user: its owner can read it, or
/// replace it, whatever its mode says.
pub fn check_owner(path: &Path, meta: &fs::Metadata) -> Result<(), KeyError> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() == me {
        Ok(())
    } else {
        let owner_name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(meta.uid()))
            .ok()
            .flatten()
            .map(|u| u.name)
            // Only a name a shell passes as one word is shown in a command to copy.
            .filter(|n| {
                !n.is_empty()
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            });
        Err(KeyError::SecretOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            owner_gid: meta.gid(),
            owner_name,
            me,
        })
    }
}

fn owner_words(uid: u32, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("user {n} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// What to do about a state file `uid` owns: what systemd/bulwark-coordinator.service sets up
/// is a state directory owned by the service's user, which the operator's commands must run
/// as. Not when root owns it: the coordinator, a network service, is never to run as root;
/// the state goes to the user the service runs as.
fn run_as_owner(uid: u32, gid: u32, name: Option<&str>) -> String {
    match name {
        _ if uid == 0 => "the coordinator must not run as root: give its state directory to \
             the user the service runs as (`chown -R bulwark-coordinator: DIR`, the user \
             systemd/bulwark-coordinator.service names) and run commands as that user"
            .to_string(),
        Some(n) => format!("run the command as its owner: `runuser -u {n} -- bulwark-coordinator ...`"),
        None => format!(
            "run the command as its owner: `setpriv --reuid={uid} --regid={gid} --clear-groups -- bulwark-coordinator ...`"
        ),
    }
}

/// Reads a secret file, refusing one that is not a regular file, that belongs to another user,
/// or that group or others may read or write. Checked on the open descriptor, not the path, so
/// a swap between the check and the read is impossible. Opened with `O_NONBLOCK`, so a fifo
/// put in its place is refused rather than waited on forever.
pub fn read_secret(path: &Path) -> Result<Zeroizing<String>, KeyError> {
    let err = |source| KeyError::ReadSecret {
        path: path.to_owned(),
        source,
    };
    let file = fs::OpenOptions::new()
        .read(true)
        // Never through a planted symlink; never blocked by a fifo.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(err)?;
    let meta = file.metadata().map_err(err)?;
    if !meta.is_file() {
        return Err(err(std::io::Error::other("not a regular file")));
    }
    check_owner(path, &meta)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::SecretPermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_SECRET_BYTES)
        .read_to_string(&mut text)
        .map_err(err)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issuer_key_round_trips_through_a_private_file_and_is_never_overwritten() {
        let dir = crate::testutil::TempDir::new("keys");
        let path = dir.path().join("issuer.key");
        let key = IssuerKey::generate().unwrap();
        key.write_new(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let loaded = IssuerKey::load(&path).unwrap();
        assert_eq!(loaded.verifying_key(), key.verifying_key());
        assert!(IssuerKey::generate().unwrap().write_new(&path).is_err());
        assert!(!format!("{loaded:?}").contains("BEGIN"));
    }

    #[test]
    fn a_group_readable_issuer_key_is_refused_with_a_fix() {
        let dir = crate::testutil::TempDir::new("keys");
        let path = dir.path().join("issuer.key");
        IssuerKey::generate().unwrap().write_new(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let e = IssuerKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("mode 0640") && e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn a_secret_file_owned_by_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: changing a file's owner needs root");
            return;
        }
        let dir = crate::testutil::TempDir::new("keys");
        let path = dir.path().join("admin.token");
        write_secret_new(&path, b"bwadm_x\n").unwrap();
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        let e = read_secret(&path).unwrap_err().to_string();
        // Run as the owner (the service's user, usually); never "chown it", which would take
        // the state away from the service.
        let run_as = match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(65534)) {
            Ok(Some(u)) => format!("user {} (uid 65534)", u.name),
            _ => "uid 65534".into(),
        };
        assert!(e.contains(&format!("belongs to {run_as}")), "{e}");
        assert!(
            e.contains("run the command as its owner: `runuser -u ")
                || e.contains("`setpriv --reuid=65534 "),
            "{e}"
        );
        assert!(!e.contains("chown"), "{e}");
    }

    #[test]
    fn the_command_to_run_as_the_owner_names_the_user_or_else_the_ids() {
        assert_eq!(
            run_as_owner(1234, 99, None),
            "run the command as its owner: \
             `setpriv --reuid=1234 --regid=99 --clear-groups -- bulwark-coordinator ...`"
        );
        assert_eq!(
            run_as_owner(999, 999, Some("bulwark-coordinator")),
            "run the command as its owner: \
             `runuser -u bulwark-coordinator -- bulwark-coordinator ...`"
        );
        // State root owns: never advice to run the coordinator as root.
        let root = run_as_owner(0, 0, Some("root"));
        assert!(
            root.contains("must not run as root") && root.contains("chown -R bulwark-coordinator:"),
            "{root}"
        );
        assert!(!root.contains("runuser"), "{root}");
    }

    #[test]
    fn a_fifo_in_place_of_a_secret_file_is_refused_without_blocking() {
        let dir = crate::testutil::TempDir::new("keys");
        let path = dir.path().join("issuer.key");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(IssuerKey::load(&p).map(drop).map_err(|e| {
                let cause = std::error::Error::source(&e).map(ToString::to_string);
                format!("{e}: {}", cause.unwrap_or_default())
            }));
        });
        let answer = rx.recv_timeout(std::time::Duration::from_secs(5));
        // Unblock a reader stuck in open(2), so the thread ends either way.
        if answer.is_err() {
            let _ = fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path);
        }
        let e = answer
            .expect("loading a fifo as the issuer key blocked")
            .unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn only_p256_spki_pem_public_keys_are_accepted() {
        let key = IssuerKey::generate().unwrap().verifying_key();
        let pem = public_key_pem(&key).unwrap();
        assert_eq!(parse_public_key(&pem).unwrap(), key);
        assert!(
            parse_public_key("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
                .is_err()
        );
        // An Ed25519 SPKI key (RFC 8410 example) is not P-256.
        let ed = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        assert!(parse_public_key(ed).is_err());
    }
}
