//! The command line: argument parsing and dispatch to library code.

use std::path::PathBuf;

use bulwark_protocol::Trust;
use clap::{Parser, Subcommand, ValueEnum};

/// Bulwark: a hardened build runner. Runs CI jobs in Linux sandboxes (namespaces, Landlock,
/// seccomp, no capabilities, cgroup limits) and records exactly what they used and made.
#[derive(Debug, Parser)]
#[command(name = "bulwark", version, about, long_about = None)]
pub struct Cli {
    /// More diagnostics from the runner itself (-v, -vv); `BULWARK_LOG` sets a filter.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// The command.
    #[command(subcommand)]
    pub command: Commands,
}

/// Trust level of a job, set by the operator, never by the job.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TrustArg {
    /// Pull requests and forks: no credentials, strictest policy.
    Untrusted,
    /// Protected branches and release tags.
    Trusted,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Run one job locally in the sandbox, output streamed live.
    ///
    /// Exit status: 0 the job succeeded; 1 it failed (a step failed, timed out, hit a limit,
    /// or an output was refused); 2 refused before any step ran (bad spec or configuration, a
    /// request above the operator's ceiling, a layer this host cannot enforce); 3 the runner
    /// itself failed after steps ran.
    ///
    /// Example: bulwark run examples/hello/job.toml --out /tmp/hello-out
    Run {
        /// The job spec (TOML).
        job: PathBuf,
        /// Source directory copied into /workspace (wins over `[source] path`).
        #[arg(long)]
        source: Option<PathBuf>,
        /// Output directory; must be absent or empty. Default: ./bulwark-out/<job>-<UTC time>/.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Signing key for provenance (PKCS#8 PEM). Default: <state>/keys/signing.key, created
        /// on first use.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Trust level of this job.
        #[arg(long, value_enum, default_value = "untrusted")]
        trust: TrustArg,
        /// Operator configuration. Default: /etc/bulwark/config.toml as root,
        /// $XDG_CONFIG_HOME/bulwark/config.toml otherwise, when that file exists.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Do not echo the job's log to the terminal (it is still written to job.log).
        #[arg(long, short)]
        quiet: bool,
        /// Die with this process (the daemon that started the run): `PR_SET_PDEATHSIG`.
        #[arg(long, hide = true, value_name = "PID")]
        parent_pid: Option<i32>,
        /// Read the job's credentials from standard input (`bulwark daemon` gives them).
        #[arg(long, hide = true)]
        credentials_stdin: bool,
    },
    /// Check artifacts against their signed provenance and a policy; say why any is rejected.
    ///
    /// Verifies the DSSE signature with the given public keys before reading anything else,
    /// then that the payload is an in-toto Statement v1 with SLSA Provenance v1, that each
    /// artifact's sha256 is one of the statement's subjects, and the policy (docs/policy.md).
    /// FILE is provenance.intoto.jsonl (every envelope in it must verify) or
    /// provenance.sigstore.json (a Sigstore bundle v0.3), recognised by content. Prints
    /// `ACCEPTED path ("subject")` or `REJECTED path: <check>: <details>` per artifact.
    ///
    /// Exit status: 0 every artifact accepted; 1 any rejected; 2 usage error or unreadable
    /// input (a missing file, a bad key, a provenance file that is not envelopes, a policy with
    /// an unknown key or a bad value).
    ///
    /// Example: bulwark verify --provenance out/provenance.intoto.jsonl --key signing.pub
    /// --policy release-policy.toml out/dist/app.tar.gz
    Verify {
        /// The provenance file (.intoto.jsonl or .sigstore.json).
        #[arg(long, value_name = "FILE")]
        provenance: PathBuf,
        /// A trusted public key (SPKI PEM, as `bulwark keygen` writes); repeat for several.
        #[arg(long = "key", value_name = "PUB", required = true)]
        keys: Vec<PathBuf>,
        /// Policy file (TOML, docs/policy.md). Without one, only weakened builds are rejected.
        #[arg(long, value_name = "POLICY.toml")]
        policy: Option<PathBuf>,
        /// Print a JSON array, one object per artifact, instead of lines.
        #[arg(long)]
        json: bool,
        /// The files to check.
        #[arg(required = true, value_name = "ARTIFACT")]
        artifacts: Vec<PathBuf>,
    },
    /// Generate a signing key pair for provenance.
    ///
    /// Writes DIR/signing.key (PKCS#8 PEM, mode 0600, never overwritten) and DIR/signing.pub
    /// (SPKI PEM), and prints the key id (sha256 of the public key's SPKI DER).
    ///
    /// Example: bulwark keygen --out /etc/bulwark/keys --algorithm ed25519
    Keygen {
        /// Directory to write the key pair into (created if absent).
        #[arg(long)]
        out: PathBuf,
        /// Signature algorithm.
        #[arg(long, value_enum, default_value = "p256")]
        algorithm: crate::provenance::keys::Algorithm,
    },
    /// Work with the runner's tool store.
    #[command(subcommand)]
    Tools(ToolsCommand),
    /// Work with a job's egress log.
    #[command(subcommand)]
    Egress(EgressCommand),
    /// Which artifacts used a tool, a commit, a source or a builder (docs/inventory.md).
    #[command(subcommand)]
    Inventory(InventoryCommand),
    /// Work with the saved build caches (docs/caches.md).
    #[command(subcommand)]
    Caches(CachesCommand),
    /// Run one command in a fresh sandbox with every layer on (no spec, no outputs).
    ///
    /// The command's output goes to stderr; its exit status is bulwark's (2 when the sandbox
    /// could not be set up). For benchmarks and for inspecting the sandbox by hand.
    ///
    /// Example: bulwark exec -- sh -c 'grep Cap /proc/self/status'
    Exec {
        /// Operator configuration (limits, uid range, state directory).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print monotonic timestamps of each launch phase as JSON on stderr.
        #[arg(long)]
        phases: bool,
        /// The command and its arguments.
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// Register this host with a coordinator, once, with a one-time token.
    ///
    /// Generates the runner's identity key (<state>/runner/identity.key, P-256, 0600; it never
    /// leaves the host), sends the public half with the token, and writes
    /// <state>/runner/registration.json. The token is read from a file (or `-` for standard
    /// input), never from the command line. A host registered already refuses (remove
    /// <state>/runner to register again). See docs/control-plane.md.
    ///
    /// Example: bulwark register --coordinator https://ci.example.com --token-file /root/reg-token --name build-7
    Register {
        /// The coordinator's base URL (https://, or http:// to a loopback address).
        #[arg(long)]
        coordinator: String,
        /// File holding the one-time registration token (`-`: standard input).
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
        /// The runner's name (lower case letters, digits, `.`, `_`, `-`). Default: the host name.
        #[arg(long)]
        name: Option<String>,
        /// Operator configuration (for the state directory).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Replace this runner's identity key, keeping its registration.
    ///
    /// Makes a new key (<state>/runner/identity.key.next until the coordinator accepts it),
    /// sends its public half signed with the current key and with the new key's proof, then
    /// puts it in place of identity.key. The old key's signatures stop working at once. Stop
    /// the daemon first (SIGTERM lets its running jobs finish); run again if it was
    /// interrupted. For rotation: a key that may have been copied calls for removing the
    /// runner at the coordinator and registering again. Exit status: 0 re-keyed; 2 refused
    /// or failed. See docs/control-plane.md.
    ///
    /// Example: bulwark rekey --config /etc/bulwark/config.toml
    Rekey {
        /// Operator configuration (for the state directory).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The long-running service: lease jobs from the coordinator, run them, report results.
    ///
    /// Runs each leased job exactly as `bulwark run` does (this host's configuration and
    /// ceilings apply; the trust level is the coordinator's), up to [daemon] slots at once,
    /// then reports result.json and the signed provenance. SIGTERM or SIGINT: finish the
    /// running jobs, report them, stop; a second signal aborts them. Outputs stay in <state>/daemon/jobs/<job id>/out/ for [daemon] keep_outputs.
    /// Exit status: 0 stopped by a signal; 2 could not start.
    ///
    /// Example: bulwark daemon --config /etc/bulwark/config.toml
    Daemon {
        /// Operator configuration.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Say which isolation layers this host can enforce, and what is missing.
    ///
    /// Exit status: 0 full isolation, 1 degraded.
    ///
    /// Example: bulwark probe --json
    Probe {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Operator configuration (to report whether rlimit fallback is allowed).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// `bulwark tools ...`.
#[derive(Debug, Subcommand)]
pub enum ToolsCommand {
    /// Recheck every entry of the tool store against its digests.
    ///
    /// Rehashes each stored download and each unpacked tree; a corrupt entry is named and
    /// moved to quarantine, so it is never mounted again (a job that needs it fetches it anew).
    /// Exit status: 0 all entries intact, 1 corrupt entries were found and quarantined,
    /// 2 the store could not be read.
    ///
    /// Example: bulwark tools verify --config /etc/bulwark/config.toml
    Verify {
        /// Operator configuration (for the state directory).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Remove what no job has used for a while, to bound the store's disk use.
    ///
    /// Removes unpacked tools, root filesystems and url sources that no job has used for
    /// --unused-days days, then the downloads none of whose trees is left, and what
    /// interrupted fetches left behind. Never removes anything a running job has mounted or
    /// a fetch is writing: those are kept and listed as busy. A job that needs something
    /// removed fetches and verifies it again. Quarantined entries are left for the operator.
    /// Safe to run while jobs run, e.g. daily from a timer.
    /// Exit status: 0 done, 2 the store could not be read or written.
    ///
    /// Example: bulwark tools prune --unused-days 30 --config /etc/bulwark/config.toml
    Prune {
        /// Remove what no job has used for this many days (0: everything not in use).
        #[arg(long, value_name = "DAYS")]
        unused_days: u32,
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Operator configuration (for the state directory).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// `bulwark caches ...`.
#[derive(Debug, Subcommand)]
pub enum CachesCommand {
    /// List every saved build cache: its source (scope), name, tier, size, tree digest, and
    /// when and by which job it was saved.
    ///
    /// Exit status: 0 listed (also when there is none), 2 the store could not be read.
    ///
    /// Example: bulwark caches list --config /etc/bulwark/config.toml
    List {
        /// One JSON array instead of lines.
        #[arg(long)]
        json: bool,
        /// Operator configuration (for the state directory).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Remove caches no job used for caches.max_unused; then, while the trusted caches alone
    /// are over caches.max_total or caches.max_total_entries, the least recently used trusted
    /// ones; then, while the whole store is, the least recently used untrusted ones.
    ///
    /// Every save does this already; run it from a timer on hosts where caches may sit
    /// unused. A cache being saved or restored is kept and reported as busy.
    /// Exit status: 0 done, 2 the configuration or the store could not be read, or a cache
    /// could not be removed.
    ///
    /// Example: bulwark caches prune --dry-run --config /etc/bulwark/config.toml
    Prune {
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Operator configuration (for the state directory and the bounds).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Remove saved caches of one source: a cache found poisoned, or to start afresh.
    ///
    /// Removes every cache of the source named by --scope (its scope as `caches list` prints
    /// it) or --key (the scope's key, also printed), or only --name, and only --tier when
    /// given. Waits for a save of it to finish and for restores copying from it; a job that
    /// restored it keeps its own copy. Artifacts built from it: `bulwark inventory query
    /// --digest <its tree digest>`.
    /// Exit status: 0 removed, 1 nothing matched, 2 usage, configuration, or a cache that
    /// could not be removed (what was removed is still listed).
    ///
    /// Example: bulwark caches remove --scope git:https://git.example/app.git --name cargo
    #[command(group(clap::ArgGroup::new("which").required(true).args(["scope", "key"])))]
    Remove {
        /// The source the caches belong to, as `caches list` prints it.
        #[arg(long)]
        scope: Option<String>,
        /// The scope's key (32 hex digits), as `caches list` prints it.
        #[arg(long)]
        key: Option<String>,
        /// Only this cache.
        #[arg(long)]
        name: Option<String>,
        /// Only this tier.
        #[arg(long, value_enum)]
        tier: Option<crate::cache::Tier>,
        /// Operator configuration (for the state directory).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// `bulwark inventory ...`.
#[derive(Debug, Subcommand)]
pub enum InventoryCommand {
    /// Index provenance files (or directories of them), only what verifies with the keys.
    ///
    /// Reads `*.intoto.jsonl` and `*.sigstore.json` under each PATH (symlinks not followed),
    /// checks every envelope's signature and statement as `bulwark verify` does, and appends
    /// what verifies to the index with the key ids that signed it; a statement already there
    /// is not added again. A file with any envelope that does not verify is named with the
    /// reason and nothing of it is added. With several --key, give --builder-keys so that a
    /// key can index statements only for the builder ids bound to it (without it, a warning).
    /// Exit status: 0 everything indexed, 1 some files refused (the rest indexed), 2 usage
    /// error or unreadable input.
    ///
    /// Example: bulwark inventory add --key pool-a.pub --key prs.pub --builder-keys
    /// release-policy.toml --index fleet.jsonl /srv/provenance
    Add {
        /// A trusted public key (SPKI PEM); repeat for several.
        #[arg(long = "key", value_name = "PUB", required = true)]
        keys: Vec<PathBuf>,
        /// A verify policy file (docs/policy.md) whose [builder_keys] table binds each builder
        /// id to the key ids that may sign for it; a statement signed by no key bound to its
        /// builder id is refused. Only [builder_keys] is applied (the inventory records every
        /// verified build, whatever a deploy policy says of it); the rest is checked as
        /// `verify` checks it.
        #[arg(long, value_name = "POLICY.toml")]
        builder_keys: Option<PathBuf>,
        /// The index. Default: <state>/inventory.jsonl, the one `bulwark run` appends to.
        #[arg(long, value_name = "FILE")]
        index: Option<PathBuf>,
        /// Operator configuration (for the state directory).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Provenance files or directories holding them.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// List the artifacts whose provenance matches every filter given.
    ///
    /// --digest matches any digest of a dependency (source tree, tool, root filesystem,
    /// runner binary) or the artifact's own sha256; --commit a git source's commit (a prefix
    /// of 7 digits or more); --uri a dependency's uri (a trailing `*` matches a prefix).
    /// Exit status: 0 something matched, 1 nothing did, 2 usage error or an unreadable index.
    ///
    /// Example: bulwark inventory query --digest 3f5a…e1 (a tool's sha256)
    Query {
        /// The index. Default: <state>/inventory.jsonl.
        #[arg(long, value_name = "FILE")]
        index: Option<PathBuf>,
        /// Operator configuration (for the state directory).
        #[arg(long)]
        config: Option<PathBuf>,
        /// A digest in hex (of a tool, source, root filesystem, runner binary, or artifact).
        #[arg(long)]
        digest: Option<String>,
        /// A git commit id, or its first 7 or more hex digits.
        #[arg(long)]
        commit: Option<String>,
        /// A dependency's uri; `https://example.org/*` for every uri under it.
        #[arg(long)]
        uri: Option<String>,
        /// A dependency's name (a tool's name is the job's choice: a hint, not an identity).
        #[arg(long)]
        name: Option<String>,
        /// The builder id (runDetails.builder.id).
        #[arg(long)]
        builder: Option<String>,
        /// A key id (sha256:<64 hex>) that signed the statement, as `bulwark keygen` prints it.
        #[arg(long, value_name = "KEYID")]
        signer: Option<String>,
        /// Print a JSON array of the artifacts found instead of lines.
        #[arg(long)]
        json: bool,
    },
}

/// `bulwark egress ...`.
#[derive(Debug, Subcommand)]
pub enum EgressCommand {
    /// Print the allow list that would have permitted every connection in an egress log.
    ///
    /// Meant for logs of jobs run in audit mode (egress.audit): review the output, then paste
    /// it into the job's `[network] allow`. One `host:port` entry per line. It lists what was
    /// attempted, not what is needed; an entry that is a loopback, private or other special
    /// address (noted on standard error) is within the operator's egress ceiling only when
    /// the ceiling names it.
    ///
    /// Example: bulwark egress suggest bulwark-out/build-20261126T101500Z/egress.log
    Suggest {
        /// The egress.log of a job's output directory.
        log: PathBuf,
    },
}

/// Runs the parsed command; returns the exit status.
pub fn dispatch(cli: Cli) -> u8 {
    crate::egress::raise_descriptor_limit();
    match cli.command {
        Commands::Run {
            job,
            source,
            out,
            key,
            trust,
            config,
            quiet,
            parent_pid,
            credentials_stdin,
        } => {
            if let Some(parent) = parent_pid {
                if let Err(e) = die_with_parent(parent) {
                    eprintln!("bulwark: --parent-pid {parent}: {e}");
                    return crate::exit::REFUSED;
                }
            }
            let (credentials, credential_updates) = if credentials_stdin {
                match crate::creds::receive_handoff() {
                    Ok((h, updates)) => (Some(h), Some(updates)),
                    Err(e) => {
                        eprintln!("bulwark: {e}");
                        return crate::exit::REFUSED;
                    }
                }
            } else {
                (None, None)
            };
            crate::job::run(crate::job::RunArgs {
                job,
                source,
                out,
                key,
                trust: match trust {
                    TrustArg::Untrusted => Trust::Untrusted,
                    TrustArg::Trusted => Trust::Trusted,
                },
                config,
                quiet,
                credentials,
                credential_updates,
            })
        }
        Commands::Register {
            coordinator,
            token_file,
            name,
            config,
        } => register(&coordinator, &token_file, name, config.as_deref()),
        Commands::Rekey { config } => rekey(config.as_deref()),
        Commands::Daemon { config } => crate::daemon::run(crate::daemon::Args { config }),
        Commands::Verify {
            provenance,
            keys,
            policy,
            json,
            artifacts,
        } => crate::verify::run(&crate::verify::Request {
            provenance,
            keys,
            policy,
            json,
            artifacts,
        }),
        Commands::Keygen { out, algorithm } => keygen(&out, algorithm),
        Commands::Tools(ToolsCommand::Verify { config }) => tools_verify(config.as_deref()),
        Commands::Tools(ToolsCommand::Prune {
            unused_days,
            dry_run,
            config,
        }) => tools_prune(unused_days, dry_run, config.as_deref()),
        Commands::Inventory(cmd) => crate::inventory::cli::run(cmd),
        Commands::Caches(cmd) => caches(cmd),
        Commands::Egress(EgressCommand::Suggest { log }) => match crate::egress::suggest(&log) {
            Ok(entries) => {
                for e in &entries {
                    println!("{e}");
                }
                // What was attempted is not what is needed: a special address (perhaps tried
                // by a hostile job for its suggestion to carry it) is said on stderr.
                for e in &entries {
                    let special = bulwark_protocol::AllowEntry::parse(e)
                        .ok()
                        .and_then(|a| match a.host {
                            bulwark_protocol::AllowHost::Ip(ip) => {
                                crate::egress::policy::special_range(ip)
                            }
                            _ => None,
                        });
                    if let Some(range) = special {
                        eprintln!(
                            "bulwark: note: {e} is a {range} address: a job may list it only \
                             when the operator's egress ceiling names it; check that the job \
                             needs it"
                        );
                    }
                }
                0
            }
            Err(e) => {
                eprintln!("bulwark: egress suggest {}: {e}", log.display());
                2
            }
        },
        Commands::Exec {
            config,
            phases,
            command,
        } => crate::exec::run(config, phases, command),
        Commands::Probe { json, config } => match crate::config::load(config.as_deref()) {
            Ok(l) => {
                let note = l.path.is_none().then(|| {
                    "note: no configuration file; built-in defaults and ceilings apply".to_string()
                });
                crate::probe::run(json, &l.config, l.path.as_deref(), note)
            }
            Err(e) => {
                eprintln!("bulwark: {e:#}");
                2
            }
        },
    }
}

/// Makes this process die when `parent` does, and checks it has not already.
fn die_with_parent(parent: i32) -> anyhow::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    // The parent may have died before the call: then nothing will ever signal.
    if nix::unistd::getppid().as_raw() != parent {
        anyhow::bail!("the parent is gone; not running");
    }
    Ok(())
}

fn register(
    coordinator: &str,
    token_file: &std::path::Path,
    name: Option<String>,
    config: Option<&std::path::Path>,
) -> u8 {
    let result = (|| -> anyhow::Result<crate::daemon::registration::Registration> {
        let loaded = crate::config::load(config)?;
        let dirs = crate::config::Dirs::resolve(&loaded.config)?;
        dirs.create()?;
        let token = crate::daemon::registration::read_token(token_file)?;
        let name = match name {
            Some(n) => n,
            None => nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .map(|h| h.to_ascii_lowercase())
                .filter(|h| bulwark_protocol::check_name(h).is_ok())
                .ok_or_else(|| {
                    anyhow::anyhow!("--name: the host name is not a runner name; give --name")
                })?,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(crate::daemon::registration::register(
            &dirs.state,
            coordinator,
            loaded.config.daemon.coordinator_ca.as_deref(),
            &token,
            &name,
        ))
    })();
    match result {
        Ok(r) => {
            println!(
                "registered as runner {} ({}) with {}",
                r.runner_id, r.name, r.coordinator
            );
            0
        }
        Err(e) => {
            eprintln!("bulwark register: {e:#}");
            2
        }
    }
}

fn rekey(config: Option<&std::path::Path>) -> u8 {
    let result = (|| -> anyhow::Result<(crate::daemon::registration::Registration, bool)> {
        let loaded = crate::config::load(config)?;
        let dirs = crate::config::Dirs::resolve(&loaded.config)?;
        let daemon_dir = dirs.state.join("daemon");
        crate::fsutil::create_private_dir(&daemon_dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", daemon_dir.display()))?;
        let _lock = crate::daemon::lock_state(&dirs.state).map_err(|e| {
            anyhow::anyhow!("{e:#}: stop it first (SIGTERM lets its running jobs finish)")
        })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(crate::daemon::registration::rekey(
            &dirs.state,
            loaded.config.daemon.coordinator_ca.as_deref(),
        ))
    })();
    match result {
        Ok((r, resumed)) => {
            let how = if resumed {
                " (an interrupted rekey finished)"
            } else {
                ""
            };
            println!(
                "runner {} ({}) re-keyed with {}{how}; its old key no longer signs",
                r.runner_id, r.name, r.coordinator
            );
            0
        }
        Err(e) => {
            eprintln!("bulwark rekey: {e:#}");
            2
        }
    }
}

fn keygen(out: &std::path::Path, algorithm: crate::provenance::keys::Algorithm) -> u8 {
    use crate::provenance::keys::{LocalKey, Signer};
    let result = LocalKey::generate(algorithm).and_then(|k| {
        k.write_pair(out)?;
        Ok(k.keyid().to_string())
    });
    match result {
        Ok(keyid) => {
            println!(
                "wrote {} and {}",
                out.join("signing.key").display(),
                out.join("signing.pub").display()
            );
            println!("algorithm {}, keyid {keyid}", algorithm.as_str());
            0
        }
        Err(e) => {
            eprintln!("bulwark: keygen: {e:#}");
            2
        }
    }
}

fn tools_prune(unused_days: u32, dry_run: bool, config: Option<&std::path::Path>) -> u8 {
    let result = (|| -> anyhow::Result<crate::tools::PruneReport> {
        let loaded = crate::config::load(config)?;
        let dirs = crate::config::Dirs::resolve(&loaded.config)?;
        let root = dirs.state.join("tools");
        // No job has used a tool yet: nothing to prune, and nothing is made (the systemd
        // unit may run with the state directory read-only).
        if std::fs::symlink_metadata(&root).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        {
            return Ok(crate::tools::PruneReport::default());
        }
        let store = crate::tools::Store::open(&root)?;
        let unused_for = std::time::Duration::from_secs(u64::from(unused_days) * 86_400);
        Ok(store.prune(unused_for, dry_run)?)
    })();
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            eprintln!("bulwark: tools prune: {e:#}");
            return 2;
        }
    };
    let verb = if dry_run { "would remove" } else { "removed" };
    for t in &report.trees {
        let days = t.last_used.elapsed().map_or(0, |d| d.as_secs() / 86_400);
        println!(
            "{verb} {}{} ({} bytes, last used {days} days ago)",
            t.entry,
            t.tool
                .as_ref()
                .map(|n| format!(" (tool {n})"))
                .unwrap_or_default(),
            t.bytes
        );
    }
    for (entry, bytes) in report.blobs.iter().chain(&report.leftovers) {
        println!("{verb} {entry} ({bytes} bytes)");
    }
    for entry in &report.busy {
        println!("kept {entry}: in use by a running job or a fetch");
    }
    println!(
        "{verb} {} trees, {} downloads, {} leftovers: {} bytes; kept {} in use, {} used in the last {unused_days} days",
        report.trees.len(),
        report.blobs.len(),
        report.leftovers.len(),
        report.bytes(),
        report.busy.len(),
        report.kept
    );
    0
}

fn caches(cmd: CachesCommand) -> u8 {
    let store = |config: Option<&std::path::Path>| -> anyhow::Result<crate::cache::Store> {
        let loaded = crate::config::load(config)?;
        crate::cache::Store::of(&loaded.config).map_err(anyhow::Error::msg)
    };
    match cmd {
        CachesCommand::List { json, config } => {
            let listed = match store(config.as_deref())
                .map_err(|e| format!("{e:#}"))
                .and_then(|s| s.list())
            {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("bulwark: caches list: {e}");
                    return 2;
                }
            };
            if json {
                match serde_json::to_string_pretty(&listed) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("bulwark: caches list: {e}");
                        return 2;
                    }
                }
                return 0;
            }
            for c in &listed {
                let scope = crate::daemon::client::printable(&c.scope);
                let key = &c.key;
                match (&c.generation, &c.problem) {
                    (Some(generation), _) => println!(
                        "{scope}  (key {key})  {}  {}  {} files  {} bytes  saved {} by {}{}  used {}  tree {}  ({generation}{})",
                        c.name,
                        c.tier,
                        c.files.unwrap_or(0),
                        c.bytes.unwrap_or(0),
                        c.saved.as_deref().unwrap_or("?"),
                        c.job.as_deref().unwrap_or("?"),
                        c.invocation
                            .as_deref()
                            .map(|i| format!(" (invocation {i})"))
                            .unwrap_or_default(),
                        c.used.as_deref().unwrap_or("?"),
                        c.tree_sha256.as_deref().unwrap_or("?"),
                        if c.generations > 1 {
                            format!(
                                ", {} older generations kept while a restore copies from them",
                                c.generations - 1
                            )
                        } else {
                            String::new()
                        }
                    ),
                    (None, Some(problem)) => println!(
                        "{scope}  (key {key})  {}  {}  unreadable: {}",
                        c.name,
                        c.tier,
                        crate::daemon::client::printable(problem)
                    ),
                    (None, None) => println!(
                        "{scope}  (key {key})  {}  {}  generations left by an interrupted \
                         removal or save (the next restore or save of it, or caches prune, removes them)",
                        c.name, c.tier
                    ),
                }
            }
            if listed.is_empty() {
                eprintln!("bulwark: no build cache is saved in this runner's state directory");
            }
            0
        }
        CachesCommand::Prune { dry_run, config } => {
            let pruned = match store(config.as_deref())
                .map_err(|e| format!("{e:#}"))
                .and_then(|s| s.prune(dry_run))
            {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("bulwark: caches prune: {e}");
                    return 2;
                }
            };
            let verb = if dry_run { "would remove" } else { "removed" };
            for (w, why) in &pruned.removed {
                println!(
                    "{verb} {}  {}  {}  {} bytes  used {}: {}",
                    w.key,
                    w.name,
                    w.tier.as_str(),
                    w.bytes,
                    humantime::format_rfc3339_seconds(w.used),
                    match why {
                        crate::cache::Why::Unused => "unused for longer than caches.max_unused",
                        crate::cache::Why::Room => {
                            "least recently used, over caches.max_total or caches.max_total_entries"
                        }
                    }
                );
            }
            for w in &pruned.busy {
                println!(
                    "busy {}  {}  {}: kept (in use by a running job, or see the errors below)",
                    w.key,
                    w.name,
                    w.tier.as_str()
                );
            }
            for e in &pruned.failed {
                eprintln!(
                    "bulwark: caches prune: {}",
                    crate::daemon::client::printable(e)
                );
            }
            let done = if dry_run {
                "would be removed"
            } else {
                "removed"
            };
            eprintln!(
                "bulwark: caches prune: {} cache(s) {done}, {} busy; the store weighs {} bytes \
                 (file contents plus {} per entry) in {} entries{}",
                pruned.removed.len(),
                pruned.busy.len(),
                pruned.total,
                crate::cache::ENTRY_CHARGE,
                pruned.total_entries,
                if dry_run { " (after the removals)" } else { "" }
            );
            if pruned.failed.is_empty() {
                0
            } else {
                2
            }
        }
        CachesCommand::Remove {
            scope,
            key,
            name,
            tier,
            config,
        } => {
            if let Some(n) = &name {
                if let Err(e) = bulwark_protocol::check_name(n) {
                    eprintln!("bulwark: caches remove: --name: {e}");
                    return 2;
                }
            }
            let Some(key) = key.or_else(|| scope.as_deref().map(crate::cache::scope_key)) else {
                eprintln!("bulwark: caches remove: give --scope or --key");
                return 2;
            };
            let done = match store(config.as_deref())
                .map_err(|e| format!("{e:#}"))
                .and_then(|s| s.remove(&key, name.as_deref(), tier))
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("bulwark: caches remove: {e}");
                    return 2;
                }
            };
            let mut failed = false;
            for r in &done {
                match &r.result {
                    Ok(()) => println!("removed {key}  {}  {}", r.name, r.tier.as_str()),
                    Err(e) => {
                        failed = true;
                        eprintln!(
                            "bulwark: caches remove: {key} {} {}: {}",
                            r.name,
                            r.tier.as_str(),
                            crate::daemon::client::printable(e)
                        );
                    }
                }
            }
            if failed {
                2
            } else if done.is_empty() {
                eprintln!(
                    "bulwark: caches remove: no saved cache matched (bulwark caches list shows \
                     the scopes and their keys)"
                );
                1
            } else {
                0
            }
        }
    }
}

fn tools_verify(config: Option<&std::path::Path>) -> u8 {
    let result = (|| -> anyhow::Result<crate::tools::VerifyReport> {
        let loaded = crate::config::load(config)?;
        let dirs = crate::config::Dirs::resolve(&loaded.config)?;
        let store = crate::tools::Store::open(&dirs.state.join("tools"))?;
        Ok(store.verify_all()?)
    })();
    match result {
        Ok(report) => {
            println!(
                "checked {} downloads and {} unpacked trees",
                report.blobs, report.trees
            );
            for c in &report.corrupt {
                println!(
                    "CORRUPT {}{}: {}; moved to {}",
                    c.entry,
                    c.tool
                        .as_ref()
                        .map(|t| format!(" (tool {t})"))
                        .unwrap_or_default(),
                    c.problem,
                    c.quarantined.display()
                );
            }
            if report.corrupt.is_empty() {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("bulwark: tools verify: {e:#}");
            2
        }
    }
}
