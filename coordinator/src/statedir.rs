//! The state directory: what `init` creates and what `serve` and the other commands load.
//!
//! ```text
//! DIR/                 0700
//!   issuer.key         0600  P-256 PKCS#8 PEM: signs job identity tokens
//!   admin.token        0600  bwadm_…: the operator's and the CI glue's bearer token
//!   coordinator.db     0600  SQLite (WAL): tokens, runners, jobs, nonces; the issuer URL
//! ```
//!
//! `init` refuses a directory that already holds any of the three: a second `init` by mistake
//! must not replace the issuer key (every cloud trust policy names it by its `kid`) or the
//! admin token (the CI glue holds it).

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::auth::{AdminToken, AuthError};
use crate::keys::{self, IssuerKey, KeyError};
use crate::state::{Db, StateError, DB_NAME};

/// File name of the issuer key.
pub const ISSUER_KEY_NAME: &str = "issuer.key";
/// File name of the admin token.
pub const ADMIN_TOKEN_NAME: &str = "admin.token";

/// What went wrong with the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// The issuer URL is not acceptable.
    #[error("issuer {url:?}: {reason}")]
    Issuer {
        /// The URL as given.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The directory holds a coordinator state already.
    #[error("{}: already holds a coordinator state ({name}); an existing state is never overwritten", dir.display())]
    Exists {
        /// The directory.
        dir: PathBuf,
        /// The file found.
        name: &'static str,
    },
    /// Creating the directory failed.
    #[error("creating the state directory {}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The state directory or database is writable by group or others.
    #[error("{}: refused: it is writable by group or others (mode {mode:04o}), who could add a runner or queue a trusted job; `chmod go-w {}` it", path.display(), path.display())]
    Writable {
        /// The directory or file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Reading the state directory's or database's metadata failed.
    #[error("{}", path.display())]
    Inspect {
        /// The directory or file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Creating or reading a key or token.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Making a token.
    #[error(transparent)]
    Token(#[from] AuthError),
    /// The database.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Checks an issuer URL and returns it in the form recorded (no trailing `/`): `https://`, or
/// `http://` with a loopback host (tests, a local trial), no credentials, query or fragment.
pub fn check_issuer(url: &str) -> Result<String, StateDirError> {
    let refuse = |reason| StateDirError::Issuer {
        url: url.to_owned(),
        reason,
    };
    let parsed = url::Url::parse(url).map_err(|_| refuse("not a URL"))?;
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => return Err(refuse("has no host")),
    };
    match parsed.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(refuse(
                "must be https:// (http:// only with a loopback host)",
            ))
        }
        _ => return Err(refuse("must be an https:// URL")),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(refuse("must not carry credentials"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(refuse("must have no query or fragment"));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

/// Creates a new coordinator state in `dir` for `issuer` (checked with [`check_issuer`]).
pub fn init(dir: &Path, issuer: &str) -> Result<(), StateDirError> {
    let issuer = check_issuer(issuer)?;
    let create_err = |source| StateDirError::CreateDir {
        dir: dir.to_owned(),
        source,
    };
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            for name in [ISSUER_KEY_NAME, ADMIN_TOKEN_NAME, DB_NAME] {
                if fs::symlink_metadata(dir.join(name)).is_ok() {
                    return Err(StateDirError::Exists {
                        dir: dir.to_owned(),
                        name,
                    });
                }
            }
        }
        Ok(_) => {
            return Err(create_err(std::io::Error::other(
                "exists and is not a directory",
            )))
        }
        Err(_) => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(create_err)?,
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(create_err)?;
    IssuerKey::generate()?.write_new(&dir.join(ISSUER_KEY_NAME))?;
    let mut token = AdminToken::generate()?;
    token.push('\n');
    keys::write_secret_new(&dir.join(ADMIN_TOKEN_NAME), token.as_bytes())?;
    let db_path = dir.join(DB_NAME);
    Db::create(&db_path, &issuer)?;
    // SQLite gives its -wal and -shm files the database file's mode.
    fs::set_permissions(&db_path, fs::Permissions::from_mode(0o600)).map_err(create_err)?;
    Ok(())
}

/// Refuses a state directory or database another user could change: one that is not the
/// effective user's, or that group or others may write. (Writing `coordinator.db` is as good
/// as holding the admin token: a runner and a trusted job for it are two rows.)
fn check_private(path: &Path) -> Result<(), StateDirError> {
    let meta = fs::metadata(path).map_err(|source| StateDirError::Inspect {
        path: path.to_owned(),
        source,
    })?;
    keys::check_owner(path, &meta)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(StateDirError::Writable {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Opens the database of the state in `dir`, refusing a directory or database another user
/// could change.
pub fn open_db(dir: &Path) -> Result<Db, StateDirError> {
    let db = dir.join(DB_NAME);
    check_private(dir)?;
    check_private(&db)?;
    Ok(Db::open(&db)?)
}

/// Loads everything `serve` needs from `dir`.
pub fn load(dir: &Path) -> Result<(Db, IssuerKey, AdminToken), StateDirError> {
    check_private(dir)?;
    let key = IssuerKey::load(&dir.join(ISSUER_KEY_NAME))?;
    let admin = AdminToken::from_text(&keys::read_secret(&dir.join(ADMIN_TOKEN_NAME))?)?;
    let db = open_db(dir)?;
    Ok((db, key, admin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issuer_must_be_https_or_loopback_http_without_query_or_credentials() {
        assert_eq!(
            check_issuer("https://ci.example.com/").unwrap(),
            "https://ci.example.com"
        );
        assert_eq!(
            check_issuer("https://ci.example.com/bulwark").unwrap(),
            "https://ci.example.com/bulwark"
        );
        assert!(check_issuer("http://127.0.0.1:8080").is_ok());
        assert!(check_issuer("http://[::1]:8080").is_ok());
        for bad in [
            "http://ci.example.com",
            "ftp://ci.example.com",
            "https://ci.example.com/?a=b",
            "https://ci.example.com/#x",
            "https://user:pw@ci.example.com",
            "ci.example.com",
        ] {
            assert!(check_issuer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn init_makes_private_files_and_refuses_to_run_twice() {
        let tmp = crate::testutil::TempDir::new("statedir");
        let dir = tmp.path().join("state");
        init(&dir, "https://ci.example.com").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(ISSUER_KEY_NAME)), 0o600);
        assert_eq!(mode(&dir.join(ADMIN_TOKEN_NAME)), 0o600);
        assert_eq!(mode(&dir.join(DB_NAME)), 0o600);
        let token = fs::read_to_string(dir.join(ADMIN_TOKEN_NAME)).unwrap();
        assert!(
            token.starts_with("bwadm_") && token.trim().len() == 6 + 43,
            "{token}"
        );
        let key_before = fs::read(dir.join(ISSUER_KEY_NAME)).unwrap();
        let e = init(&dir, "https://ci.example.com")
            .unwrap_err()
            .to_string();
        assert!(e.contains("never overwritten"), "{e}");
        assert_eq!(fs::read(dir.join(ISSUER_KEY_NAME)).unwrap(), key_before);
        let (db, _, admin) = load(&dir).unwrap();
        assert_eq!(db.issuer().unwrap(), "https://ci.example.com");
        assert!(admin
            .check_authorization(Some(&format!("Bearer {}", token.trim())))
            .is_ok());
    }

    #[test]
    fn a_state_whose_directory_or_database_others_can_write_is_refused() {
        let tmp = crate::testutil::TempDir::new("statedir");
        let dir = tmp.path().join("state");
        init(&dir, "https://ci.example.com").unwrap();
        // Whoever can write coordinator.db can add a runner and queue a trusted job for it.
        for (path, mode) in [(dir.clone(), 0o770), (dir.join(DB_NAME), 0o622)] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let e = load(&dir).unwrap_err().to_string();
            assert!(e.contains("writable by group or others"), "{e}");
            let e = open_db(&dir).unwrap_err().to_string();
            assert!(e.contains("writable by group or others"), "{e}");
            let back = if path == dir { 0o700 } else { 0o600 };
            fs::set_permissions(&path, fs::Permissions::from_mode(back)).unwrap();
        }
        assert!(load(&dir).is_ok());
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(dir.join(DB_NAME), Some(65534), None).unwrap();
            let e = load(&dir).unwrap_err().to_string();
            assert!(e.contains("uid 65534"), "{e}");
        } else {
            eprintln!("skipped the owner check: changing a file's owner needs root");
        }
    }
}
