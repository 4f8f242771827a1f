//! `bulwark register`: this host's identity with a coordinator.
//!
//! The runner makes its own P-256 key pair and sends only the public half with the one-time
//! token; the private key stays in `<state>/runner/identity.key` (0600, in a 0700 directory)
//! and signs every later request. It is a different key from the provenance signing key on
//! purpose: one proves to the coordinator which host is asking, the other vouches for
//! artifacts to everyone; either can be rotated, or kept in different hardware, alone.
//!
//! Order, so that a crash anywhere wastes at most the token: the key is written (durably)
//! before the token is spent, and `registration.json` only after the coordinator accepted it.
//! A host already registered refuses to register again until its operator removes the
//! directory (re-registering silently would orphan the old runner record).
//!
//! `bulwark rekey` replaces the identity key and keeps the runner (its id, name and jobs), for
//! scheduled rotation; not for a key that may have been copied (whoever holds the copy could
//! re-key first: such a host is removed at the coordinator and registered again). With the daemon stopped (it holds
//! the key in memory; the state lock keeps the two apart), the new key is written durably
//! beside the old one (`identity.key.next`) before it is sent; the request is signed with the
//! old key and carries the new key's signature over the runner id and the new key (proof that
//! the runner holds it); once the coordinator answers, the new key replaces the old file. A
//! crash or a lost answer leaves `identity.key.next`: running `rekey` again sends that same key,
//! and if the coordinator already holds it (the old key is refused), asks again signed with
//! it. The old key's signatures stop working at the coordinator the moment it records the new
//! one.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use bulwark_protocol::control::{
    rekey_proof_input, RegisterRequest, RegisterResponse, RekeyRequest, RekeyResponse,
    REGISTRATION_TOKEN_PREFIX,
};
use serde::{Deserialize, Serialize};

use super::client::Client;
use crate::provenance::keys::{Algorithm, LocalKey, Signer};

/// Largest registration token file read (a token is about 50 bytes).
const MAX_TOKEN_BYTES: u64 = 4096;

/// What `registration.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The coordinator's base URL.
    pub coordinator: String,
    /// The id it gave this runner.
    pub runner_id: String,
    /// The runner's name as registered.
    pub name: String,
    /// The coordinator's OIDC issuer.
    pub issuer: String,
}

/// The runner's identity directory: `<state>/runner`.
pub fn dir(state: &Path) -> PathBuf {
    state.join("runner")
}

fn key_path(state: &Path) -> PathBuf {
    dir(state).join("identity.key")
}

/// The key a `rekey` is installing, until the coordinator has it.
fn next_key_path(state: &Path) -> PathBuf {
    dir(state).join("identity.key.next")
}

fn registration_path(state: &Path) -> PathBuf {
    dir(state).join("registration.json")
}

/// A registered runner: its record and its key.
#[derive(Debug)]
pub struct Identity {
    /// The registration.
    pub registration: Registration,
    /// The identity key.
    pub key: LocalKey,
}

/// Loads this host's registration, or says how to make one. Refused while a `bulwark rekey`
/// is unfinished: the coordinator may hold the next key already and refuse this one.
pub fn load(state: &Path) -> Result<Identity> {
    let next = next_key_path(state);
    if std::fs::symlink_metadata(&next).is_ok() {
        bail!(
            "an interrupted `bulwark rekey` left {}: run `bulwark rekey` again to finish it \
             (the coordinator may already refuse the current key)",
            next.display()
        );
    }
    load_unchecked(state)
}

/// [`load`] whatever `identity.key.next` says (for `rekey`, which finishes it).
fn load_unchecked(state: &Path) -> Result<Identity> {
    let path = registration_path(state);
    let text = match read_record(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "this runner is not registered ({} does not exist): run `bulwark register --coordinator URL --token-file FILE` first",
            path.display()
        ),
        Err(e) => return Err(anyhow!(e).context(format!("reading {}", path.display()))),
    };
    let registration: Registration = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a registration record", path.display()))?;
    let key = LocalKey::load(&key_path(state))
        .context("the runner's identity key (register again if it is lost)")?;
    Ok(Identity { registration, key })
}

/// Reads `registration.json`: a regular file (a fifo there never blocks), not through a
/// symlink, at most 64 KiB.
fn read_record(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    crate::fsutil::open_regular(path, true)?
        .take(64 * 1024)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// Reads a registration token from `path` (`-`: standard input): one line, the prefix
/// [`REGISTRATION_TOKEN_PREFIX`], nothing else. From a file, never an argument, so it shows
/// in no process list or shell history.
pub fn read_token(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut raw = Vec::new();
    if path == Path::new("-") {
        std::io::stdin()
            .take(MAX_TOKEN_BYTES)
            .read_to_end(&mut raw)
            .context("reading the registration token from standard input")?;
    } else {
        let f = crate::fsutil::open_regular(path, true)
            .with_context(|| format!("--token-file {}", path.display()))?;
        f.take(MAX_TOKEN_BYTES)
            .read_to_end(&mut raw)
            .with_context(|| format!("--token-file {}: reading", path.display()))?;
    }
    let text = std::str::from_utf8(&raw)
        .map_err(|_| anyhow!("--token-file: not text"))?
        .trim();
    if !text.starts_with(REGISTRATION_TOKEN_PREFIX)
        || text.len() > 200
        || !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        bail!(
            "--token-file: not a registration token (one line starting with {REGISTRATION_TOKEN_PREFIX}, as `bulwark-coordinator registration-token` prints)"
        );
    }
    Ok(text.to_string())
}

/// Registers this host with the coordinator at `coordinator`; returns the record written.
pub async fn register(
    state: &Path,
    coordinator: &str,
    ca: Option<&Path>,
    token: &str,
    name: &str,
) -> Result<Registration> {
    bulwark_protocol::check_name(name).map_err(|e| anyhow!("--name: {e}"))?;
    let client = Client::new(coordinator, ca)?;
    let reg_path = registration_path(state);
    let existing = match read_record(&reg_path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => bail!("{}: {e}; remove it to register", reg_path.display()),
    };
    if let Some(existing) = existing {
        let who = serde_json::from_str::<Registration>(&existing)
            .map(|r| format!("as {} with {}", r.runner_id, r.coordinator))
            .unwrap_or_else(|_| "(its record is unreadable)".into());
        bail!(
            "this runner is registered already {who}; to register again, stop its daemon and remove {}",
            dir(state).display()
        );
    }
    crate::fsutil::create_private_dir(&dir(state))
        .with_context(|| format!("creating {}", dir(state).display()))?;
    // The key first, durably: once the token is spent, only this key can use the runner id.
    let key = LocalKey::generate(Algorithm::P256)?;
    key.write_private_replacing(&key_path(state))?;
    let request = RegisterRequest {
        token: token.to_string(),
        name: name.to_string(),
        public_key: key.public_key_pem()?,
    };
    let body = serde_json::to_vec(&request).context("encoding the registration")?;
    let answer = client.post_unsigned("/v1/runners/register", body).await?;
    // serde's message quotes the answer (an unknown field, verbatim): made printable.
    let response: RegisterResponse = serde_json::from_slice(&answer.body).map_err(|e| {
        anyhow!(
            "the coordinator's answer to the registration: {}",
            super::client::printable(&e.to_string())
        )
    })?;
    if response.runner_id.is_empty()
        || response.runner_id.len() > 128
        || !response
            .runner_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("the coordinator's answer to the registration: runner_id is not a plain id");
    }
    // The issuer is written to registration.json and shown in logs: a URL, nothing else.
    let issuer_ok = response.issuer.len() <= 2048
        && !response.issuer.chars().any(char::is_control)
        && url::Url::parse(&response.issuer)
            .is_ok_and(|u| matches!(u.scheme(), "https" | "http") && u.host().is_some());
    if !issuer_ok {
        bail!("the coordinator's answer to the registration: issuer is not an http(s) URL");
    }
    let registration = Registration {
        coordinator: client.base().as_str().to_string(),
        runner_id: response.runner_id,
        name: name.to_string(),
        issuer: response.issuer,
    };
    let mut json = serde_json::to_vec_pretty(&registration)?;
    json.push(b'\n');
    crate::fsutil::write_atomic_mode(&reg_path, &json, 0o600)
        .with_context(|| format!("writing {}", reg_path.display()))?;
    Ok(registration)
}

/// Replaces this runner's identity key (module docs). The caller holds the state lock
/// ([`super::lock_state`]), so no daemon signs with the old key meanwhile. Returns the
/// registration and whether an earlier, interrupted rekey was finished.
pub async fn rekey(state: &Path, ca: Option<&Path>) -> Result<(Registration, bool)> {
    let identity = load_unchecked(state)?;
    let reg = &identity.registration;
    let client = Client::new(&reg.coordinator, ca)?;
    let next_path = next_key_path(state);
    let resumed = std::fs::symlink_metadata(&next_path).is_ok();
    let next = if resumed {
        LocalKey::load(&next_path).with_context(|| {
            format!(
                "the key an interrupted rekey left ({}): do not remove it, the coordinator may \
                 hold it already; if it cannot be read, remove this runner at the coordinator \
                 and register the host again",
                next_path.display()
            )
        })?
    } else {
        let key = LocalKey::generate(Algorithm::P256)?;
        key.write_private_replacing(&next_path)?;
        key
    };
    let public_key = next.public_key_pem()?;
    let input = rekey_proof_input(&reg.runner_id, &public_key)
        .ok_or_else(|| anyhow!("registration.json: runner_id holds a line break"))?;
    let proof = next.sign(&input)?;
    let body = serde_json::to_vec(&RekeyRequest {
        public_key,
        proof: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, proof),
    })
    .context("encoding the rekey request")?;
    const PATH: &str = "/v1/runners/rekey";
    let answer = match client
        .post_signed(PATH, body.clone(), &reg.runner_id, &identity.key)
        .await
    {
        // The coordinator may hold the next key already: an earlier answer was lost.
        Err(e) if resumed && e.status() == Some(401) => client
            .post_signed(PATH, body, &reg.runner_id, &next)
            .await
            .with_context(|| {
                format!("the coordinator refused the current key ({e}) and the next one")
            })?,
        other => other?,
    };
    let response: RekeyResponse = serde_json::from_slice(&answer.body).map_err(|e| {
        anyhow!(
            "the coordinator's answer to the rekey: {}",
            super::client::printable(&e.to_string())
        )
    })?;
    if response.runner_id != reg.runner_id {
        bail!("the coordinator's answer to the rekey names another runner");
    }
    let key_path = key_path(state);
    next.write_private_replacing(&key_path)?;
    std::fs::remove_file(&next_path)
        .and_then(|()| crate::fsutil::sync_parent(&next_path))
        .with_context(|| format!("removing {} (the key is in place)", next_path.display()))?;
    Ok((identity.registration, resumed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_token_is_read_from_a_file_and_checked() {
        let dir = crate::tools::testutil::TempDir::new("regtoken");
        let p = dir.path().join("t");
        std::fs::write(&p, "bwreg_abcDEF-_09\n").unwrap();
        assert_eq!(read_token(&p).unwrap(), "bwreg_abcDEF-_09");
        for bad in ["", "abc", "bwreg_a b", "bwadm_xyz", "bwreg_\u{202e}x"] {
            std::fs::write(&p, bad).unwrap();
            let e = read_token(&p).unwrap_err().to_string();
            assert!(e.contains("not a registration token"), "{bad:?}: {e}");
        }
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(
            read_token(&link).is_err(),
            "a symlinked token file is refused"
        );
    }

    /// A coordinator on loopback that answers one request with `status` and `body`.
    fn one_answer(status: u16, body: &'static str) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head and the (small) body: until the body's length has arrived.
            loop {
                let n = s.read(&mut buf).unwrap();
                seen.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&seen).to_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                    if seen.len() >= end + 4 + len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let answer = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(answer.as_bytes()).unwrap();
        });
        url
    }

    fn register_against(url: &str) -> String {
        let dir = crate::tools::testutil::TempDir::new("regans");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt
            .block_on(register(dir.path(), url, None, "bwreg_abc", "build-7"))
            .unwrap_err();
        assert!(!registration_path(dir.path()).exists());
        format!("{e:#}")
    }

    #[test]
    fn a_coordinators_answer_is_quoted_printably_and_its_issuer_checked() {
        let e = register_against(&one_answer(
            200,
            r#"{"runner_id":"runner-1","issuer":"https://ci.example.com","\u001b]0;owned\u0007":1}"#,
        ));
        assert!(e.contains("unknown field"), "{e}");
        assert!(!e.chars().any(char::is_control), "{e:?}");
        let e = register_against(&one_answer(
            200,
            r#"{"runner_id":"runner-1","issuer":"https://ci.example.com/\u001b[2J"}"#,
        ));
        assert!(e.contains("issuer"), "{e}");
        assert!(!e.chars().any(char::is_control), "{e:?}");
    }

    #[test]
    fn a_fifo_in_place_of_the_registration_record_is_refused_without_blocking() {
        let dir = crate::tools::testutil::TempDir::new("regfifo");
        std::fs::create_dir(dir.path().join("runner")).unwrap();
        nix::unistd::mkfifo(
            &registration_path(dir.path()),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let e = format!("{:#}", load(dir.path()).unwrap_err());
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn an_unregistered_runner_is_told_how_to_register() {
        let dir = crate::tools::testutil::TempDir::new("unreg");
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("bulwark register --coordinator"), "{e}");
    }
}
