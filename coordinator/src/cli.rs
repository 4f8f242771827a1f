//! The command line of `bulwark-coordinator` (clap derive). The binary parses it and calls
//! the library; nothing here acts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Longest life of a registration token: it is meant to be used within the hour it is made.
pub const MAX_REGISTRATION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The Bulwark coordinator: registers runners, queues and leases jobs, records results, and
/// issues job identity tokens (OIDC). See docs/control-plane.md.
#[derive(Debug, Parser)]
#[command(name = "bulwark-coordinator", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Creates a new state directory: the issuer key, the admin token and the database.
    #[command(
        after_help = "Example:\n  bulwark-coordinator init --state /var/lib/bulwark-coordinator --issuer https://ci.example.com\n\nRefuses a directory that already holds a coordinator state."
    )]
    Init {
        /// The state directory (created with mode 0700).
        #[arg(long)]
        state: PathBuf,
        /// The OIDC issuer URL: https://, the address runners and clouds reach the coordinator at.
        #[arg(long)]
        issuer: String,
    },
    /// Prints a new one-time runner registration token (only its sha256 is stored).
    #[command(
        after_help = "Example:\n  bulwark-coordinator registration-token --state /var/lib/bulwark-coordinator --ttl 1h > token\n  # hand `token` to the host's operator: bulwark register --token-file token ..."
    )]
    RegistrationToken {
        /// The state directory.
        #[arg(long)]
        state: PathBuf,
        /// How long the token stays valid (at most 7 days).
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
    },
    /// Lists or removes registered runners.
    #[command(
        after_help = "Examples:\n  bulwark-coordinator runners list --state /var/lib/bulwark-coordinator\n  bulwark-coordinator runners remove runner-0123... --state /var/lib/bulwark-coordinator"
    )]
    Runners {
        /// What to do with runners.
        #[command(subcommand)]
        command: RunnersCommand,
    },
    /// Queues, lists or cancels jobs, shows their logs, exports their provenance, or prunes
    /// their stored outputs.
    #[command(
        after_help = "Examples:\n  bulwark-coordinator jobs submit --state /var/lib/bulwark-coordinator --trust untrusted job.toml\n  bulwark-coordinator jobs list --state /var/lib/bulwark-coordinator\n  bulwark-coordinator jobs export-provenance --state /var/lib/bulwark-coordinator --out /srv/provenance\n  bulwark inventory add --key runner-1.pub --key runner-2.pub --index fleet.jsonl /srv/provenance\n  bulwark-coordinator jobs prune-outputs --state /var/lib/bulwark-coordinator --older-than 90d"
    )]
    Jobs {
        /// What to do with jobs.
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Asks the fleet's inventory which artifacts used a digest, a commit or a uri.
    #[command(
        after_help = "Examples:\n  bulwark-coordinator inventory query --state /var/lib/bulwark-coordinator --digest <sha256 of a tool>\n  bulwark-coordinator inventory query --state /var/lib/bulwark-coordinator --commit 0123abc --json\n  bulwark-coordinator inventory query --state /var/lib/bulwark-coordinator --uri 'git+https://git.example/app.git'"
    )]
    Inventory {
        /// What to ask.
        #[command(subcommand)]
        command: InventoryCommand,
    },
    /// Serves the HTTP API: over TLS with --tls-cert and --tls-key, else plain HTTP (on
    /// loopback, or behind a TLS terminator).
    #[command(
        after_help = "Example:\n  bulwark-coordinator serve --state /var/lib/bulwark-coordinator --listen 127.0.0.1:8440\n  bulwark-coordinator serve --state /var/lib/bulwark-coordinator --listen 0.0.0.0:8443 --tls-cert /etc/bulwark-coordinator/tls.crt --tls-key /etc/bulwark-coordinator/tls.key --max-connections-per-address 128\n  bulwark-coordinator serve --state /var/lib/bulwark-coordinator --listen 0.0.0.0:8440 --behind-tls-proxy\n\nPrints `listening on ADDR` to stderr once bound."
    )]
    Serve {
        /// The state directory.
        #[arg(long)]
        state: PathBuf,
        /// Address to listen on (`127.0.0.1:0` picks a free port).
        #[arg(long)]
        listen: SocketAddr,
        /// Allow a non-loopback address: a TLS terminator is in front of the coordinator.
        #[arg(long, conflicts_with = "tls_cert")]
        behind_tls_proxy: bool,
        /// Serve TLS with this certificate chain (PEM, the server's certificate first); read
        /// again when the file changes (a renewal needs no restart).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM: PKCS#8, RSA or EC).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Most bytes of outputs and logs stored per job (`4GiB`, `512MiB`); each file counts
        /// as whole 4 KiB blocks.
        #[arg(long, default_value = "4GiB", value_parser = parse_size)]
        max_output_bytes: u64,
        /// Most files (distinct contents) of outputs and logs stored per job.
        #[arg(long, default_value_t = 16_384)]
        max_output_files: u64,
        /// Free space an output upload must leave on the state directory's file system.
        #[arg(long, default_value = "1GiB", value_parser = parse_size)]
        min_free_disk: u64,
        /// How long an output upload may go without a byte arriving before it is cut (408)
        /// and its temporary file removed (`30s`, `2m`).
        #[arg(long, default_value = "30s", value_parser = parse_idle)]
        upload_idle_timeout: Duration,
        /// Most connections one client (an IPv4 address, an IPv6 /64) may hold at once, of the
        /// 512 served; more are closed as soon as they are accepted. 0 (the default): no bound
        /// per client. Set it only where each runner has an address of its own: runners behind
        /// one NAT address, an L4 load balancer that rewrites source addresses, a TLS
        /// terminator in front, or a cloud subnet (one IPv6 /64) all come from one client, so
        /// give at least the sum, over the runners sharing an address, of 1 + 3 x their
        /// `[daemon] slots` (docs/control-plane.md, "Connections").
        #[arg(long, value_name = "N", default_value_t = crate::api::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS)]
        max_connections_per_address: usize,
        /// Also serve Prometheus metrics (`GET /metrics`) on this address, without
        /// authentication: counts, ages, runner ids and names (docs/control-plane.md,
        /// "Metrics"). Bind it where only the scraper reaches it.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
    },
}

/// `inventory` subcommands.
#[derive(Debug, Subcommand)]
pub enum InventoryCommand {
    /// Lists the artifacts of finished jobs whose provenance names the digest (a tool's, a
    /// source tree's, a runner binary's, or the artifact's own), whose git source is the
    /// commit, and which used a dependency of the uri, whichever are given; newest first.
    /// Exit status: 0 something matched, 1 nothing did, 2 a bad digest, commit or uri, or a
    /// state that could not be read.
    #[command(
        after_help = "Examples:\n  bulwark-coordinator inventory query --state /var/lib/bulwark-coordinator --commit 0123abc\n  bulwark-coordinator inventory query --state /var/lib/bulwark-coordinator --uri 'https://tools.example/*'"
    )]
    Query {
        /// The state directory.
        #[arg(long)]
        state: PathBuf,
        /// A digest in hex (sha256: 64 digits; `sha256:` in front is accepted).
        #[arg(long)]
        digest: Option<String>,
        /// A git commit, or its first 7 or more hex digits.
        #[arg(long)]
        commit: Option<String>,
        /// A dependency's uri as provenance records it (`git+https://git.example/app.git`,
        /// a tool's URL), or its prefix followed by `*`; with --digest, both describe one
        /// dependency.
        #[arg(long)]
        uri: Option<String>,
        /// JSON output, for scripts.
        #[arg(long)]
        json: bool,
    },
}

/// `runners` subcommands.
#[derive(Debug, Subcommand)]
pub enum RunnersCommand {
    /// Lists runners (id, name, registered, removed; times in RFC 3339 UTC), one per line, or
    /// as JSON.
    #[command(
        after_help = "Example:\n  bulwark-coordinator runners list --state /var/lib/bulwark-coordinator --json"
    )]
    List {
        /// The state directory.
        #[arg(long)]
        state: PathBuf,
        /// JSON output, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Removes a runner: its signatures stop working at once, its leased jobs become lost.
    #[command(
        after_help = "Example:\n  bulwark-coordinator runners remove runner-0123456789abcdef0123456789abcdef --state /var/lib/bulwark-coordinator"
    )]
    Remove {
        /// The runner's id.
        id: String,
        /// The state directory.
        #[arg(long)]
        state: PathBuf,
    },
}

/// `jobs` subcommands.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Lists the newest jobs: id, state, trust, name, runner, result status.
    #[command(
        after_help = "Example:\n  bulwark-coordinator jobs list --state /var/lib/bulwark-coordinator --limit 20 --json"
    )]
    List {
        /// The state directory.
        #[arg(long)]
        state: PathBuf,
        /// How many, newest first.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// JSON output, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Queues a job: reads the TOML job spec, checks it as `POST /v1/jobs` does (a git source
    /// with a full commit, or a url with a sha256; no local path) and prints the new job's id.
    /// Exit status 2 for a spec that cannot be read or is refused, naming the file and field.
    #[command(
        after_help = "Example:\n  bulwark-coordinator jobs submit --state /var/lib/bulwark-coordinator --trust trusted release.toml\n  job-0123456789abcdef0123456789abcdef\n\nThe trust level is the submitter's decision: untrusted for a pull request, trusted for a protected branch or a tag. Written to the state directory directly, like the other jobs commands; over HTTP, POST /v1/jobs (docs/control-plane.md)."
    )]
    Submit {
        /// The state directory.
        #[arg(long)]
        state: PathBuf,
        /// The job's trust level: `untrusted` (no credentials, the strict egress ceiling) or
        /// `trusted`.
        #[arg(long, default_value = "untrusted", value_parser = parse_trust)]
        trust: bulwark_protocol::Trust,
        /// The job spec (TOML, as `bulwark run` reads it).
        spec: PathBuf,
    },
    /// Writes the provenance of every finished job to OUT/<job id>.intoto.jsonl, so that
    /// `bulwark inventory add` can index the whole fleet's builds. A file already there is
    /// left alone when it holds the same provenance, and refused when it does not.
    #[command(
        after_help = "Example:\n  bulwark-coordinator jobs export-provenance --state /var/lib/bulwark-coordinator --out /srv/provenance\n  bulwark inventory add --key runner-1.pub --index fleet.jsonl /srv/provenance"
    )]
    ExportProvenance {
        /// The state directory.
        #[arg(long)]
        state: PathBuf,
        /// The directory to write to (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Writes a job's job.log: the one its result lists, or, while it runs, what has arrived
    /// so far. With --follow, keeps writing what arrives until the job ends (exit status 1 if
    /// its lease ran out without a result). Control characters are shown in caret notation
    /// when the output is a terminal.
    #[command(
        after_help = "Example:\n  bulwark-coordinator jobs log --state /var/lib/bulwark-coordinator --follow job-0123456789abcdef0123456789abcdef"
    )]
    Log {
        /// The state directory.
        #[arg(long)]
        state: PathBuf,
        /// Keep writing what arrives until the job ends.
        #[arg(long, short)]
        follow: bool,
        /// The job.
        id: String,
    },
    /// Cancels a job: a queued one at once (recorded finished, refused: it never runs); a
    /// running one is stopped by its runner within the runner's poll interval, which then
    /// reports it (failed, with the log of what ran). Exit status 1 for a job that has ended.
    #[command(
        after_help = "Example:\n  bulwark-coordinator jobs cancel --state /var/lib/bulwark-coordinator job-0123456789abcdef0123456789abcdef"
    )]
    Cancel {
        /// The state directory.
        #[arg(long)]
        state: PathBuf,
        /// The job.
        id: String,
    },
    /// Removes the stored outputs and logs of jobs that ended (finished, or their lease ran
    /// out) longer ago than --older-than. Their records, results and provenance stay.
    #[command(
        after_help = "Example:\n  bulwark-coordinator jobs prune-outputs --state /var/lib/bulwark-coordinator --older-than 90d"
    )]
    PruneOutputs {
        /// The state directory.
        #[arg(long)]
        state: PathBuf,
        /// How long ago a job must have ended (`90d`, `12h`).
        #[arg(long, value_parser = parse_age)]
        older_than: Duration,
    },
}

fn parse_trust(text: &str) -> Result<bulwark_protocol::Trust, String> {
    text.parse()
}

fn parse_idle(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&d) {
        return Err("must be 1s to 10m".into());
    }
    Ok(d)
}

fn parse_age(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d.is_zero() || d > MAX_REGISTRATION_TTL {
        return Err("must be more than 0 and at most 7d".into());
    }
    Ok(d)
}

/// A size with its unit (`4GiB`, `512MiB`, `8B`), as the runner's configuration
/// writes them.
fn parse_size(text: &str) -> Result<u64, String> {
    bulwark_protocol::parse_size(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent_and_every_subcommand_shows_an_example() {
        Cli::command().debug_assert();
        let mut cli = Cli::command();
        for sub in cli.get_subcommands_mut() {
            let mut leaves: Vec<clap::Command> = sub.get_subcommands().cloned().collect();
            if leaves.is_empty() {
                leaves.push(sub.clone());
            }
            for mut leaf in leaves {
                let help = leaf.render_long_help().to_string();
                assert!(help.contains("Example"), "{}: {help}", leaf.get_name());
            }
        }
    }

    /// No bound per client address unless asked for, whether the coordinator serves TLS or
    /// plain HTTP: only the operator knows whether runners share addresses.
    #[test]
    fn serve_bounds_no_client_address_unless_asked() {
        let per_address = |extra: &[&str]| {
            let mut args = vec![
                "bulwark-coordinator",
                "serve",
                "--state",
                "/s",
                "--listen",
                "0.0.0.0:8443",
            ];
            args.extend_from_slice(extra);
            match Cli::try_parse_from(args).unwrap().command {
                Command::Serve {
                    max_connections_per_address,
                    ..
                } => max_connections_per_address,
                _ => unreachable!(),
            }
        };
        assert_eq!(per_address(&["--tls-cert", "c", "--tls-key", "k"]), 0);
        assert_eq!(per_address(&["--behind-tls-proxy"]), 0);
        assert_eq!(
            per_address(&[
                "--tls-cert",
                "c",
                "--tls-key",
                "k",
                "--max-connections-per-address",
                "130"
            ]),
            130
        );
        assert_eq!(
            crate::api::ServeOptions::default().max_connections_per_address,
            0
        );
    }

    #[test]
    fn a_registration_ttl_must_be_positive_and_short() {
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("30d").is_err());
        assert!(parse_ttl("soon").is_err());
    }
}
