//! Signing keys: generation, loading, the key id, and the [`Signer`] seam.
//!
//! Formats: the private key is PKCS#8 PEM (`signing.key`, mode 0600), the public key SPKI PEM
//! (`signing.pub`). Algorithms: ECDSA P-256 with SHA-256 (signatures ASN.1 DER, as
//! securesystemslib and sigstore-js require) and Ed25519.
//!
//! The key id is `sha256:` followed by the lowercase hex sha256 of the public key's SPKI DER
//! encoding: a function of the public key alone, stable across PEM formatting, and the same
//! for every tool that can decode the PEM (`openssl pkey -pubin -outform DER | sha256sum`).
//!
//! The private key is read only after every process of the job is gone and is never passed to
//! the sandbox: signing happens in the runner, the job never shares a process or a mount
//! namespace with it. Key material is held in types whose `Debug` redacts it. A private key
//! file that group or others can read is refused: whoever else could read it could sign.
//!
//! [`Signer`] is the seam for keys that are not files (KMS, HSM, keyless signing).

use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use sha2::{Digest, Sha256};

/// Signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Algorithm {
    /// ECDSA over NIST P-256 with SHA-256, DER signatures.
    P256,
    /// Ed25519.
    Ed25519,
}

impl Algorithm {
    /// Name used in messages and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::P256 => "ecdsa-p256-sha256",
            Algorithm::Ed25519 => "ed25519",
        }
    }
}

/// Something that signs bytes with a key identified by `keyid`.
pub trait Signer {
    /// The key id carried in every signature.
    fn keyid(&self) -> &str;
    /// The algorithm.
    fn algorithm(&self) -> Algorithm;
    /// Signs `message` (the DSSE PAE bytes); returns the signature in its wire encoding.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>>;
    /// The public key, as SPKI PEM.
    fn public_key_pem(&self) -> Result<String>;
}

/// Most bytes read from a private or public key file (a PEM key is a few hundred).
const MAX_KEY_BYTES: u64 = 64 * 1024;

/// File name of a private key in a key directory.
pub const PRIVATE_NAME: &str = "signing.key";
/// File name of the public key beside it.
pub const PUBLIC_NAME: &str = "signing.pub";

/// A private key held in memory.
pub struct LocalKey {
    inner: Inner,
    keyid: String,
}

enum Inner {
    P256(p256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

impl fmt::Debug for LocalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LocalKey({}, {}, <private key redacted>)",
            self.algorithm().as_str(),
            self.keyid
        )
    }
}

impl LocalKey {
    /// A new random key.
    pub fn generate(alg: Algorithm) -> Result<LocalKey> {
        use p256::elliptic_curve::Generate;
        let inner = match alg {
            Algorithm::P256 => Inner::P256(
                p256::ecdsa::SigningKey::try_generate_from_rng(&mut getrandom::SysRng).map_err(
                    |e| {
                        anyhow::anyhow!(
                            "generating a P-256 key: the system random source failed: {e}"
                        )
                    },
                )?,
            ),
            Algorithm::Ed25519 => {
                let mut seed = zeroize::Zeroizing::new([0u8; 32]);
                getrandom::fill(seed.as_mut()).map_err(|e| {
                    anyhow::anyhow!(
                        "generating an Ed25519 key: the system random source failed: {e}"
                    )
                })?;
                Inner::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed))
            }
        };
        LocalKey::from_inner(inner)
    }

    fn from_inner(inner: Inner) -> Result<LocalKey> {
        let der = match &inner {
            Inner::P256(k) => k
                .verifying_key()
                .to_public_key_der()
                .context("encoding the public key")?
                .into_vec(),
            Inner::Ed25519(k) => k
                .verifying_key()
                .to_public_key_der()
                .context("encoding the public key")?
                .into_vec(),
        };
        Ok(LocalKey {
            inner,
            keyid: keyid_of_spki_der(&der),
        })
    }

    /// Reads a PKCS#8 PEM private key, refusing a file that anyone but the user running
    /// bulwark could read: group or others (its mode), or another owner.
    ///
    /// The file is opened once and everything is checked on, and read through, that
    /// descriptor: judged by path and read by path again, a key whose directory someone else
    /// may write could be swapped between the check and the read. A key file another user owns
    /// passes any mode check, yet that user can read it and sign anything.
    pub fn load(path: &Path) -> Result<LocalKey> {
        use std::io::Read;
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let what = || format!("signing key {}", path.display());
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
            .open(path)
            .with_context(what)?;
        let meta = file.metadata().with_context(what)?;
        if !meta.is_file() {
            bail!(
                "signing key {}: refused: not a regular file",
                path.display()
            );
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "signing key {}: refused: it is readable or writable by group or others (mode {mode:04o}); make it private with `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            bail!(
                "signing key {}: refused: it belongs to uid {}, who can read it and sign \
                 anything, not to the user running bulwark (uid {me}); `chown {me} {}` it",
                path.display(),
                meta.uid(),
                path.display()
            );
        }
        let mut pem = zeroize::Zeroizing::new(String::new());
        file.take(MAX_KEY_BYTES)
            .read_to_string(&mut pem)
            .with_context(|| format!("signing key {}: cannot read", path.display()))?;
        let inner = if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_pem(&pem) {
            Inner::P256(k)
        } else if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem) {
            Inner::Ed25519(k)
        } else {
            bail!("signing key {}: not a PKCS#8 PEM ECDSA P-256 or Ed25519 private key (bulwark keygen writes one)", path.display());
        };
        LocalKey::from_inner(inner)
    }

    /// Writes `signing.key` (0600, never replacing one) and `signing.pub` into `dir`.
    pub fn write_pair(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let key_path = dir.join(PRIVATE_NAME);
        if !self.write_private_new(dir)? {
            bail!(
                "creating {}: it exists already (an existing key is never overwritten)",
                key_path.display()
            );
        }
        self.write_public(dir)
    }

    /// The private key as PKCS#8 PEM. An Ed25519 key is written as PKCS#8 v1 (RFC 8410: the
    /// seed alone), which OpenSSL 3.0 and Python's `cryptography` read; ed25519-dalek's own
    /// encoding is v2 with the public key beside it, which neither reads (both still load
    /// here).
    fn private_pem(&self) -> Result<zeroize::Zeroizing<String>> {
        match &self.inner {
            Inner::P256(k) => k.to_pkcs8_pem(LineEnding::LF),
            Inner::Ed25519(k) => ed25519_dalek::pkcs8::KeypairBytes {
                secret_key: k.to_bytes(),
                public_key: None,
            }
            .to_pkcs8_pem(LineEnding::LF),
        }
        .context("encoding the private key")
    }

    /// Writes `dir/signing.key` (mode 0600) unless a file is there already; `false` then. The
    /// key is written and fsynced under a temporary name and hard-linked into place, so the
    /// name never shows a half-written key (a crash, or another run reading it meanwhile), and
    /// of two runs creating it at once one wins and the other learns it lost.
    pub fn write_private_new(&self, dir: &Path) -> Result<bool> {
        let private = self.private_pem()?;
        let key_path = dir.join(PRIVATE_NAME);
        crate::fsutil::write_new_atomic(&key_path, private.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", key_path.display()))
    }

    /// Writes the private key to `path` (PKCS#8 PEM, mode 0600), replacing what is there,
    /// atomically and durably: for keys that are not provenance keys (the runner's identity).
    pub fn write_private_replacing(&self, path: &Path) -> Result<()> {
        let private = self.private_pem()?;
        crate::fsutil::write_atomic_mode(path, private.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Writes (or replaces) `dir/signing.pub`, mode 0644, atomically.
    pub fn write_public(&self, dir: &Path) -> Result<()> {
        let pub_path = dir.join(PUBLIC_NAME);
        crate::fsutil::write_atomic_mode(&pub_path, self.public_key_pem()?.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", pub_path.display()))
    }

    /// The verifying half.
    pub fn public(&self) -> PublicKey {
        match &self.inner {
            Inner::P256(k) => PublicKey {
                inner: PubInner::P256(*k.verifying_key()),
                keyid: self.keyid.clone(),
                written_keyid: None,
            },
            Inner::Ed25519(k) => PublicKey {
                inner: PubInner::Ed25519(k.verifying_key()),
                keyid: self.keyid.clone(),
                written_keyid: None,
            },
        }
    }
}

impl Signer for LocalKey {
    fn keyid(&self) -> &str {
        &self.keyid
    }

    fn algorithm(&self) -> Algorithm {
        match self.inner {
            Inner::P256(_) => Algorithm::P256,
            Inner::Ed25519(_) => Algorithm::Ed25519,
        }
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        use signature_traits::Signer as _;
        Ok(match &self.inner {
            Inner::P256(k) => {
                let sig: p256::ecdsa::Signature = k.try_sign(message).context("ECDSA signing")?;
                sig.to_der().as_bytes().to_vec()
            }
            Inner::Ed25519(k) => k
                .try_sign(message)
                .context("Ed25519 signing")?
                .to_bytes()
                .to_vec(),
        })
    }

    fn public_key_pem(&self) -> Result<String> {
        self.public().to_pem()
    }
}

/// `signature` trait re-exported through p256 (the same crate version ed25519-dalek uses).
mod signature_traits {
    pub use p256::ecdsa::signature::{Signer, Verifier};
}

/// A public key that verifies signatures.
#[derive(Debug, Clone)]
pub struct PublicKey {
    inner: PubInner,
    keyid: String,
    /// The key id of the DER as written in the PEM, when that is not the canonical encoding
    /// (a P-256 point stored compressed): what `openssl pkey -pubin -outform DER | sha256sum`
    /// prints for that file, so the key answers to it too.
    written_keyid: Option<String>,
}

#[derive(Debug, Clone)]
enum PubInner {
    P256(p256::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl PublicKey {
    /// Reads an SPKI PEM public key (ECDSA P-256 or Ed25519).
    pub fn from_pem(pem: &str) -> Result<PublicKey> {
        let inner = if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            PubInner::P256(k)
        } else if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
            PubInner::Ed25519(k)
        } else {
            bail!("not an SPKI PEM ECDSA P-256 or Ed25519 public key");
        };
        let der = match &inner {
            PubInner::P256(k) => k.to_public_key_der()?.into_vec(),
            PubInner::Ed25519(k) => k.to_public_key_der()?.into_vec(),
        };
        let keyid = keyid_of_spki_der(&der);
        // The same key can be written in another encoding (a compressed P-256 point): its id,
        // as a recipe over the file's own DER computes it, names this key too.
        let written_keyid = p256::pkcs8::der::Document::from_pem(pem)
            .ok()
            .map(|(_, doc)| keyid_of_spki_der(doc.as_bytes()))
            .filter(|id| *id != keyid);
        Ok(PublicKey {
            inner,
            keyid,
            written_keyid,
        })
    }

    /// Reads a public key file: a regular file (a fifo is refused, not waited on) of at most
    /// 64 KiB, so that `--key /dev/zero` does not fill memory. A private key passed by mistake
    /// (`signing.key` for `signing.pub`) is refused saying so; its bytes are zeroed after.
    pub fn load(path: &Path) -> Result<PublicKey> {
        let what = || format!("public key {}", path.display());
        let bytes = zeroize::Zeroizing::new(
            crate::fsutil::read_regular_capped(path, MAX_KEY_BYTES)
                .with_context(|| format!("{}: cannot read", what()))?,
        );
        let pem = std::str::from_utf8(&bytes)
            .map_err(|_| anyhow::anyhow!("not a PEM file (not text)"))
            .with_context(what)?;
        PublicKey::from_pem(pem)
            .map_err(|e| {
                if pem.contains("PRIVATE KEY") {
                    anyhow::anyhow!(
                        "{e:#}; it is a private key: pass the public key (signing.pub) instead"
                    )
                } else {
                    e
                }
            })
            .with_context(what)
    }

    /// The key id (see the module docs): of the canonical encoding (uncompressed point).
    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    /// Every key id this key answers to: [`PublicKey::keyid`], then the id of the DER as
    /// written in its file when that differs (a compressed P-256 point).
    pub fn keyids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.keyid.as_str()).chain(self.written_keyid.as_deref())
    }

    /// SPKI PEM.
    pub fn to_pem(&self) -> Result<String> {
        Ok(match &self.inner {
            PubInner::P256(k) => k.to_public_key_pem(LineEnding::LF)?,
            PubInner::Ed25519(k) => k.to_public_key_pem(LineEnding::LF)?,
        })
    }

    /// Why `signature` cannot be one of this key's, when its shape alone says so: the
    /// usual reason another signer's output fails here. `None` when it has the right shape
    /// (then only the check says whether it verifies).
    pub fn shape_problem(&self, signature: &[u8]) -> Option<String> {
        match &self.inner {
            PubInner::P256(_) if p256::ecdsa::Signature::from_der(signature).is_err() => {
                Some(if signature.len() == 64 {
                    "64 bytes, not ASN.1 DER (raw r||s? P-256 signatures must be DER)".into()
                } else {
                    format!(
                        "{} bytes that are not an ASN.1 DER ECDSA signature",
                        signature.len()
                    )
                })
            }
            PubInner::Ed25519(_) if signature.len() != 64 => Some(format!(
                "{} bytes, not the 64 of an Ed25519 signature",
                signature.len()
            )),
            _ => None,
        }
    }

    /// Checks `signature` over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        use signature_traits::Verifier as _;
        match &self.inner {
            PubInner::P256(k) => p256::ecdsa::Signature::from_der(signature)
                .is_ok_and(|s| k.verify(message, &s).is_ok()),
            PubInner::Ed25519(k) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|s| k.verify_strict(message, &s).is_ok()),
        }
    }
}

/// `sha256:<hex of sha256(SPKI DER)>`.
pub fn keyid_of_spki_der(der: &[u8]) -> String {
    format!("sha256:{}", crate::outputs::hex(&Sha256::digest(der)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir() -> crate::tools::testutil::TempDir {
        crate::tools::testutil::TempDir::named("bulwark-keys")
    }

    #[test]
    fn a_p256_key_stored_compressed_answers_to_the_id_the_documented_recipe_gives_it() {
        let openssl = |args: &[&str]| {
            std::process::Command::new("openssl")
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
        };
        if openssl(&["version"]).is_none() {
            eprintln!("SKIP: openssl is not installed (.ci/run installs it)");
            return;
        }
        let dir = tempdir();
        let key = LocalKey::generate(Algorithm::P256).unwrap();
        key.write_public(&dir).unwrap();
        let plain = dir.join(PUBLIC_NAME);
        let compressed = dir.join("compressed.pub");
        let path = |p: &Path| p.to_str().unwrap().to_string();
        openssl(&[
            "ec",
            "-pubin",
            "-in",
            &path(&plain),
            "-conv_form",
            "compressed",
            "-pubout",
            "-out",
            &path(&compressed),
        ])
        .expect("openssl ec -conv_form compressed");
        // docs/build-type.md: `openssl pkey -pubin -in signing.pub -outform DER | sha256sum`.
        let recipe = |p: &Path| {
            keyid_of_spki_der(
                &openssl(&["pkey", "-pubin", "-in", &path(p), "-outform", "DER"])
                    .unwrap()
                    .stdout,
            )
        };
        assert_eq!(recipe(&plain), key.keyid());
        let written = recipe(&compressed);
        assert_ne!(written, key.keyid(), "openssl wrote the point compressed");
        let loaded = PublicKey::load(&compressed).unwrap();
        assert_eq!(loaded.keyid(), key.keyid());
        assert_eq!(
            loaded.keyids().collect::<Vec<_>>(),
            [key.keyid(), written.as_str()]
        );
        // The key loaded plain answers to its one id only.
        assert_eq!(PublicKey::load(&plain).unwrap().keyids().count(), 1);
        // A signature naming the key by either id verifies, and the signers name both, so a
        // [builder_keys] entry written with either id binds it.
        let env = super::super::dsse::sign(b"{}", "t", &key).unwrap();
        for id in [key.keyid().to_string(), written.clone()] {
            let mut e = env.clone();
            e.signatures[0].keyid = id;
            let ok = super::super::dsse::verify(&e, "t", std::slice::from_ref(&loaded)).unwrap();
            assert_eq!(ok.signers, [key.keyid().to_string(), written.clone()]);
            let bound = std::collections::BTreeMap::from([(
                "https://b".to_string(),
                vec![written.clone()],
            )]);
            crate::verify::policy::check_builder_keys(&bound, "https://b", &ok.signers).unwrap();
        }
    }

    #[test]
    fn openssl_reads_the_private_keys_written_and_derives_the_public_key_written() {
        let Ok(version) = std::process::Command::new("openssl")
            .arg("version")
            .output()
        else {
            eprintln!("SKIP: openssl is not installed (.ci/run installs it)");
            return;
        };
        assert!(version.status.success());
        for alg in [Algorithm::P256, Algorithm::Ed25519] {
            let dir = tempdir();
            LocalKey::generate(alg).unwrap().write_pair(&dir).unwrap();
            let out = std::process::Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(dir.join(PRIVATE_NAME))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{alg:?}: openssl cannot read the private key: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                String::from_utf8(out.stdout).unwrap(),
                std::fs::read_to_string(dir.join(PUBLIC_NAME)).unwrap(),
                "{alg:?}"
            );
        }
    }

    #[test]
    fn an_ed25519_key_in_pkcs8_v2_as_written_before_still_loads() {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let dir = tempdir();
        let path = dir.join(PRIVATE_NAME);
        std::fs::write(&path, key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let loaded = LocalKey::load(&path).unwrap();
        assert_eq!(loaded.algorithm(), Algorithm::Ed25519);
    }

    #[test]
    fn keys_round_trip_through_pem_and_sign_verifiably() {
        for alg in [Algorithm::P256, Algorithm::Ed25519] {
            let dir = tempdir();
            let key = LocalKey::generate(alg).unwrap();
            key.write_pair(&dir).unwrap();
            assert_eq!(
                fs::metadata(dir.join("signing.key"))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777,
                0o600
            );
            let loaded = LocalKey::load(&dir.join("signing.key")).unwrap();
            assert_eq!(loaded.keyid(), key.keyid());
            assert!(key.keyid().starts_with("sha256:") && key.keyid().len() == 71);
            let public = PublicKey::load(&dir.join("signing.pub")).unwrap();
            assert_eq!(public.keyid(), key.keyid());
            let sig = loaded.sign(b"message").unwrap();
            assert!(public.verify(b"message", &sig));
            assert!(!public.verify(b"messagf", &sig));
            if alg == Algorithm::P256 {
                assert_eq!(sig[0], 0x30, "P-256 signatures are ASN.1 DER sequences");
            }
            assert!(!format!("{loaded:?}").contains("BEGIN"));
            // Never overwritten.
            assert!(key.write_pair(&dir).is_err());
        }
    }

    #[test]
    fn a_public_key_that_is_not_a_small_regular_file_is_refused_at_once() {
        use crate::tools::testutil::{fifo, returns_within};
        let dir = tempdir();
        let load = |p: std::path::PathBuf| {
            returns_within("PublicKey::load", move || {
                PublicKey::load(&p)
                    .map(|k| k.keyid().to_string())
                    .map_err(|e| format!("{e:#}"))
            })
        };
        // A fifo without a writer: opened the usual way, it waits for one for ever.
        let pipe = dir.join("signing.pub");
        fifo(&pipe);
        assert_eq!(
            load(pipe.clone()).unwrap_err(),
            format!(
                "public key {}: cannot read: not a regular file (a fifo)",
                pipe.display()
            )
        );
        // A real key followed by more than any key file holds.
        let key = LocalKey::generate(Algorithm::P256).unwrap();
        let big = dir.join("big.pub");
        let pem = key.public().to_pem().unwrap();
        fs::write(&big, pem.clone() + &"\n".repeat(MAX_KEY_BYTES as usize)).unwrap();
        assert_eq!(
            load(big.clone()).unwrap_err(),
            format!(
                "public key {}: cannot read: larger than 64 KiB",
                big.display()
            )
        );
        fs::write(&big, &pem).unwrap();
        assert_eq!(load(big).unwrap(), key.keyid());
        // A device: read carelessly, /dev/zero fills memory.
        assert_eq!(
            load("/dev/zero".into()).unwrap_err(),
            "public key /dev/zero: cannot read: not a regular file (a device node)"
        );
    }

    #[test]
    fn a_private_key_given_as_a_public_key_is_refused_saying_which_to_pass() {
        let dir = tempdir();
        LocalKey::generate(Algorithm::Ed25519)
            .unwrap()
            .write_pair(&dir)
            .unwrap();
        let p = dir.join(PRIVATE_NAME);
        assert_eq!(
            format!("{:#}", PublicKey::load(&p).unwrap_err()),
            format!(
                "public key {}: not an SPKI PEM ECDSA P-256 or Ed25519 public key; it is a \
                 private key: pass the public key (signing.pub) instead",
                p.display()
            )
        );
    }

    #[test]
    fn a_private_key_another_user_owns_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP a_private_key_another_user_owns_is_refused: needs root to chown");
            return;
        }
        let dir = tempdir();
        LocalKey::generate(Algorithm::P256)
            .unwrap()
            .write_pair(&dir)
            .unwrap();
        let p = dir.join("signing.key");
        LocalKey::load(&p).unwrap();
        // Mode 0600 still, but another user's: that user can read it.
        std::os::unix::fs::chown(&p, Some(4_000_000_000), None).unwrap();
        let e = LocalKey::load(&p).unwrap_err().to_string();
        assert!(e.contains("belongs to uid 4000000000"), "{e}");
    }

    #[test]
    fn a_group_readable_private_key_is_refused_with_a_fix() {
        let dir = tempdir();
        LocalKey::generate(Algorithm::P256)
            .unwrap()
            .write_pair(&dir)
            .unwrap();
        let p = dir.join("signing.key");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        let e = LocalKey::load(&p).unwrap_err().to_string();
        assert!(e.contains("mode 0640") && e.contains("chmod 600"), "{e}");
    }
}
