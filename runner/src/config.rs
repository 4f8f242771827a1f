//! Operator configuration and where the runner keeps its state.
//!
//! As root: `/etc/bulwark/config.toml`, state in `/var/lib/bulwark`, runtime in
//! `/run/bulwark`. Rootless: the XDG equivalents. `[paths]` in the configuration overrides the
//! state and runtime directories (tests use that to keep each case separate). None of these
//! directories is ever visible inside a sandbox: the sandbox view is built from an empty root.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bulwark_protocol::Config;

/// Whether the runner runs as root (per-job uids, cgroups) or as an ordinary user.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

fn home() -> PathBuf {
    env_dir("HOME").unwrap_or_else(|| PathBuf::from("/nonexistent"))
}

/// The default configuration path for this user.
pub fn default_config_path() -> PathBuf {
    if is_root() {
        PathBuf::from("/etc/bulwark/config.toml")
    } else {
        env_dir("XDG_CONFIG_HOME")
            .unwrap_or_else(|| home().join(".config"))
            .join("bulwark/config.toml")
    }
}

/// A loaded configuration and where it came from.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration (defaults when no file).
    pub config: Config,
    /// The file read, if any.
    pub path: Option<PathBuf>,
}

/// Loads `explicit`, or the default path if that file exists, or the defaults.
pub fn load(explicit: Option<&Path>) -> Result<Loaded> {
    let path = match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => Some(default_config_path()).filter(|p| p.exists()),
    };
    let Some(path) = path else {
        return Ok(Loaded {
            config: Config::default(),
            path: None,
        });
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("configuration {}: cannot read", path.display()))?;
    let config = Config::from_toml_str(&text)
        .map_err(|e| anyhow::anyhow!("configuration {}: {e}", path.display()))?;
    Ok(Loaded {
        config,
        path: Some(path),
    })
}

/// What to do when the state directory cannot be made ([`Dirs::state_creatable`]): change
/// what chose it. `config_path` is the configuration file read, if any.
pub fn state_dir_advice(config: &Config, config_path: Option<&Path>) -> String {
    let file = config_path.map_or_else(
        || default_config_path().display().to_string(),
        |p| p.display().to_string(),
    );
    match (&config.paths.state_dir, config_path) {
        (Some(_), _) => {
            format!("set paths.state_dir in {file} to a directory this user can write (or make it)")
        }
        (None, _) if is_root() => {
            format!("set paths.state_dir in {file} to a directory on a writable filesystem")
        }
        (None, Some(_)) => format!(
            "set paths.state_dir in {file} to a directory this user can write, or \
             XDG_STATE_HOME (its default is $XDG_STATE_HOME/bulwark, else \
             $HOME/.local/state/bulwark)"
        ),
        (None, None) => format!(
            "set XDG_STATE_HOME to a directory this user can write (the state directory is \
             then $XDG_STATE_HOME/bulwark), or paths.state_dir in a configuration file \
             ({file}, or one given with --config)"
        ),
    }
}

/// Where this runner keeps state and runtime files.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// Keys, job workspaces, the tool store, the inventory, the daemon's registration and jobs.
    pub state: PathBuf,
    /// Locks and sockets.
    pub runtime: PathBuf,
}

impl Dirs {
    /// Resolves the directories for this user and configuration.
    pub fn resolve(config: &Config) -> Result<Dirs> {
        let state = match &config.paths.state_dir {
            Some(p) => PathBuf::from(p),
            None if is_root() => PathBuf::from("/var/lib/bulwark"),
            None => env_dir("XDG_STATE_HOME")
                .unwrap_or_else(|| home().join(".local/state"))
                .join("bulwark"),
        };
        let runtime = match &config.paths.runtime_dir {
            Some(p) => PathBuf::from(p),
            None if is_root() => PathBuf::from("/run/bulwark"),
            None => match env_dir("XDG_RUNTIME_DIR") {
                Some(r) => r.join("bulwark"),
                None => state.join("run"),
            },
        };
        if !state.is_absolute() || !runtime.is_absolute() {
            bail!("paths.state_dir and paths.runtime_dir must be absolute paths");
        }
        Ok(Dirs { state, runtime })
    }

    /// Per-job directories.
    pub fn jobs(&self) -> PathBuf {
        self.state.join("jobs")
    }

    /// Whether the filesystem under the state directory (or its nearest existing ancestor)
    /// is mounted `noexec`. Job workspaces and `/tmp` live there, and a bind mount keeps its
    /// source's `noexec` (inside the job's user namespace it cannot be lifted): a job could
    /// then run nothing it builds (`./configure`'s test programs, `cargo test`). `None` when
    /// nothing along the path can be examined.
    pub fn state_noexec(&self) -> Option<bool> {
        let found = self
            .state
            .ancestors()
            .find_map(|p| nix::sys::statvfs::statvfs(p).ok())?;
        Some(
            found
                .flags()
                .contains(nix::sys::statvfs::FsFlags::ST_NOEXEC),
        )
    }

    /// Whether the state directory exists, or this user could make it, found without making
    /// anything: the nearest directory above it that exists must be a directory this user may
    /// add entries to, on a filesystem mounted read-write. `Err` says why not (`probe` adds
    /// what to do, [`state_dir_advice`]).
    pub fn state_creatable(&self) -> std::result::Result<(), String> {
        use nix::sys::statvfs::{statvfs, FsFlags};
        use nix::unistd::{access, AccessFlags};
        let state = self.state.display();
        let mut missing = Vec::new();
        for dir in self.state.ancestors() {
            match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() && missing.is_empty() => return Ok(()),
                Ok(m) if m.is_dir() => {
                    let first = missing
                        .last()
                        .map_or(state.to_string(), |p: &&Path| p.display().to_string());
                    if statvfs(dir).is_ok_and(|v| v.flags().contains(FsFlags::ST_RDONLY)) {
                        return Err(format!(
                            "the state directory {state} does not exist and cannot be made: {} is on a read-only filesystem",
                            dir.display()
                        ));
                    }
                    if let Err(e) = access(dir, AccessFlags::W_OK | AccessFlags::X_OK) {
                        return Err(format!(
                            "the state directory {state} does not exist and this user cannot make it: {} cannot be created in {} ({})",
                            first,
                            dir.display(),
                            e.desc()
                        ));
                    }
                    return Ok(());
                }
                Ok(_) => {
                    return Err(format!(
                        "the state directory {state} cannot be made: {} is not a directory",
                        dir.display()
                    ))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(dir),
                Err(e) => {
                    return Err(format!(
                        "the state directory {state}: {}: {e}",
                        dir.display()
                    ))
                }
            }
        }
        Err(format!(
            "the state directory {state}: no directory above it exists"
        ))
    }

    /// What `probe` and `run` say when [`Dirs::state_noexec`] is true.
    pub fn noexec_warning(&self) -> String {
        format!(
            "the state directory {} is on a noexec mount: jobs cannot run programs they build \
             in /workspace or /tmp (Permission denied); set paths.state_dir to a filesystem \
             mounted without noexec",
            self.state.display()
        )
    }

    /// Creates the directories, private to the runner's user.
    pub fn create(&self) -> Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        // The state directory and `jobs/` are 0711: a job's unprivileged uid must be able to
        // walk to its own workspace (mode 0700, owned by that uid), but nobody but the runner
        // can list them. Keys and other secrets live in 0700 subdirectories.
        for (d, mode) in [
            (&self.state, 0o711),
            (&self.jobs(), 0o711),
            (&self.runtime, 0o700),
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(d)
                .with_context(|| format!("creating {}", d.display()))?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("setting the mode of {}", d.display()))?;
        }
        Ok(())
    }
}
