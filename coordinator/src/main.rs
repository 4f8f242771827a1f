//! `bulwark-coordinator`: parses the command line and calls the library.
#![forbid(unsafe_code)]

use std::io::Write as _;

use anyhow::{Context, Result};
use bulwark_coordinator::cli::{Cli, Command, InventoryCommand, JobsCommand, RunnersCommand};
use bulwark_coordinator::outputs::{OutputLimits, OutputStore};
use bulwark_coordinator::{admin, api, auth, inventory, state, statedir};
use bulwark_protocol::terminal;
use clap::Parser;

/// Errors are printed as one line, the chain joined with `: ` (never `Debug`, which would add
/// a stack trace when `RUST_BACKTRACE` is set): a refusal is a message for the operator, not
/// a crash. Exit status 1, as before.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulwark-coordinator: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour only for a terminal: a log file or the journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Init { state, issuer } => {
            statedir::init(&state, &issuer)
                .with_context(|| format!("initialising {}", state.display()))?;
            eprintln!(
                "created {} (issuer.key, admin.token, coordinator.db)",
                state.display()
            );
        }
        Command::RegistrationToken { state, ttl } => {
            let db = statedir::open_db(&state)?;
            let token = auth::generate_registration_token()?;
            let expires_at = state::now().saturating_add(ttl.as_secs());
            db.add_registration_token(&auth::sha256_hex(token.as_bytes()), expires_at)?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", token.as_str()).context("writing the token")?;
        }
        Command::Inventory {
            command:
                InventoryCommand::Query {
                    state,
                    digest,
                    commit,
                    uri,
                    json,
                },
        } => {
            let query = match (inventory::Query {
                digest,
                commit,
                uri,
            })
            .check()
            {
                Ok(q) => q,
                Err(e) => {
                    eprintln!("bulwark-coordinator: inventory query: {e}");
                    std::process::exit(2);
                }
            };
            // Exit status 1 is "nothing matched": a state that cannot be read is 2, so that no
            // script takes it for "not affected".
            let answer = match statedir::open_db(&state)
                .map_err(|e| format!("{e:#}"))
                .and_then(|db| inventory::query(&db, &query))
            {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("bulwark-coordinator: inventory query: {e}");
                    std::process::exit(2);
                }
            };
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&answer)?)?;
            } else {
                for h in &answer.hits {
                    // Paths, names and ids as the runner reported them: made safe to print.
                    let used: Vec<String> = h
                        .matched
                        .iter()
                        .map(|d| {
                            let digests: Vec<String> =
                                d.digest.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                            let uri = d
                                .uri
                                .as_deref()
                                .map(|u| format!(" {u}"))
                                .unwrap_or_default();
                            // Names are the jobs' choice: quoted, so where each ends is plain.
                            format!(
                                "{}{uri} {}",
                                d.name
                                    .as_deref()
                                    .map_or_else(|| "?".to_string(), terminal::quoted),
                                digests.join(",")
                            )
                        })
                        .collect();
                    writeln!(
                        out,
                        "{}  {}  job {} ({}), {}, runner {}, finished {} by {}{}",
                        // Checked to be hex when it was read.
                        h.artifact.sha256,
                        // The job chose it: quoted, so that a name holding `  job … finished
                        // … by …` cannot pass for the line's own fields.
                        terminal::quoted(&h.artifact.name),
                        h.job_id,
                        h.job_name,
                        h.trust,
                        h.runner_id.as_deref().unwrap_or("-"),
                        admin::printable(&h.finished),
                        admin::printable(&h.builder_id),
                        if used.is_empty() {
                            String::new()
                        } else {
                            format!("; used {}", admin::printable(&used.join("; ")))
                        }
                    )?;
                }
            }
            out.flush()?;
            if answer.cut {
                eprintln!(
                    "bulwark-coordinator: inventory query: more than {} jobs or {} artifacts \
                     matched; only the newest are listed: narrow the query",
                    inventory::MAX_JOBS,
                    inventory::MAX_HITS
                );
            }
            if answer.unindexed > 0 {
                eprintln!(
                    "bulwark-coordinator: inventory query: {} finished job(s) reported \
                     provenance that could not be read; no answer covers them (the \
                     coordinator's log names each: \"a result's provenance cannot be \
                     indexed\", with its job_id)",
                    answer.unindexed
                );
            }
            if answer.hits.is_empty() {
                eprintln!("bulwark-coordinator: inventory query: nothing matched");
                std::process::exit(1);
            }
        }
        Command::Runners { command } => match command {
            RunnersCommand::List { state, json } => {
                let runners = statedir::open_db(&state)?.runners()?;
                let mut out = std::io::stdout().lock();
                if json {
                    let list: Vec<_> = runners
                        .iter()
                        .map(|r| {
                            serde_json::json!({
                                "id": r.id, "name": r.name,
                                "registered_at": r.registered_at, "removed_at": r.removed_at,
                                "registered": admin::rfc3339(r.registered_at),
                                "removed": r.removed_at.map(admin::rfc3339),
                            })
                        })
                        .collect();
                    writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
                } else {
                    for r in runners {
                        let removed = r.removed_at.map_or_else(
                            || "-".to_owned(),
                            |t| format!("removed:{}", admin::rfc3339(t)),
                        );
                        writeln!(
                            out,
                            "{}\t{}\t{}\t{removed}",
                            r.id,
                            r.name,
                            admin::rfc3339(r.registered_at)
                        )?;
                    }
                }
            }
            RunnersCommand::Remove { id, state } => {
                let mut db = statedir::open_db(&state)?;
                if !db.remove_runner(&id, state::now())? {
                    anyhow::bail!("runner {id}: no such active runner (see `runners list`)");
                }
                eprintln!("removed runner {id}");
            }
        },
        Command::Jobs { command } => jobs(command)?,
        Command::Serve {
            state,
            listen,
            behind_tls_proxy,
            tls_cert,
            tls_key,
            max_output_bytes,
            max_output_files,
            min_free_disk,
            upload_idle_timeout,
            max_connections_per_address,
            metrics_listen,
        } => {
            let tls = match (&tls_cert, &tls_key) {
                (Some(cert), Some(key)) => Some(bulwark_coordinator::tls::acceptor(cert, key)?),
                _ => None,
            };
            let options = api::ServeOptions {
                max_connections_per_address,
                ..api::ServeOptions::default()
            };
            api::check_listen(listen, behind_tls_proxy || tls.is_some())?;
            let (db, key, admin) = statedir::load(&state)?;
            let outputs = OutputStore::open(
                &state,
                OutputLimits {
                    max_job_bytes: max_output_bytes,
                    max_job_files: max_output_files,
                    min_free_bytes: min_free_disk,
                },
            )?;
            outputs.remove_partial_uploads()?;
            let mut coordinator = api::Coordinator::new(db, key, admin, outputs)?
                .with_upload_idle_timeout(upload_idle_timeout);
            if let Some(served) = &tls {
                coordinator = coordinator.with_tls_expiry(std::sync::Arc::clone(&served.expiry));
            }
            let tls = tls.map(|served| served.acceptor);
            // One event-loop thread: requests are a short transaction and a signature each, run
            // on the blocking pool; SQLite serialises writers anyway.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(async move {
                let stop = stop_signal().context("handling SIGTERM and SIGINT")?;
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("listening on {listen}"))?;
                let bound = listener.local_addr().context("reading the bound address")?;
                let metrics = match metrics_listen {
                    Some(addr) => {
                        let l = tokio::net::TcpListener::bind(addr)
                            .await
                            .with_context(|| format!("listening on {addr} (--metrics-listen)"))?;
                        let at = l.local_addr().context("reading the bound address")?;
                        if !at.ip().is_loopback() {
                            tracing::warn!(address = %at, "metrics served without authentication on a non-loopback address: make sure only the scraper reaches it");
                        }
                        eprintln!("metrics on {at}");
                        Some(l)
                    }
                    None => None,
                };
                if let Some(cert) = &tls_cert {
                    eprintln!("serving TLS with {}", cert.display());
                }
                eprintln!("listening on {bound}");
                api::serve_with_metrics(
                    listener,
                    metrics,
                    tls,
                    coordinator,
                    options,
                    stop,
                )
                .await
                .context("serving the API")
            })?;
            eprintln!("stopped");
        }
    }
    Ok(())
}

/// `bulwark-coordinator jobs ...`.
fn jobs(command: JobsCommand) -> Result<()> {
    match command {
        JobsCommand::Submit { state, trust, spec } => {
            // Exit status 2, as the API's 400: the spec is at fault, not the coordinator.
            let job = match admin::read_spec(&spec) {
                Ok(job) => job,
                Err(e) => {
                    eprintln!("bulwark-coordinator: jobs submit: {e}");
                    std::process::exit(2);
                }
            };
            let db = statedir::open_db(&state)?;
            let id = api::new_job_id()?;
            db.submit_job(&id, &job, trust, state::now())?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{id}").context("writing the job id")?;
            eprintln!("job {id} ({}) queued, {trust}", job.name);
        }
        JobsCommand::List { state, limit, json } => {
            let jobs = statedir::open_db(&state)?.list_jobs(limit, state::now())?;
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&jobs)?)?;
            } else {
                for j in jobs {
                    let runner = j.runner_id.as_deref().unwrap_or("-");
                    // The runner's word: a compromised runner must not reach the terminal.
                    let status = j
                        .status
                        .as_deref()
                        .map_or_else(|| "-".into(), admin::printable);
                    let job_state = serde_json::to_value(j.state)?;
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}\t{runner}\t{status}",
                        j.id,
                        job_state.as_str().unwrap_or("?"),
                        j.trust.as_str(),
                        // Checked against the name pattern when it was submitted.
                        j.name,
                    )?;
                }
            }
        }
        JobsCommand::ExportProvenance { state, out } => {
            let db = statedir::open_db(&state)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let (mut written, mut present) = (0u64, 0u64);
            db.each_provenance(|id, text| {
                match admin::export_provenance(&out, id, text)? {
                    true => written += 1,
                    false => present += 1,
                }
                Ok(())
            })?;
            eprintln!(
                "{written} written, {present} already there, in {}",
                out.display()
            );
        }
        JobsCommand::Log { state, follow, id } => {
            let mut db = statedir::open_db(&state)?;
            let store = OutputStore::open(&state, OutputLimits::default())?;
            let stdout = std::io::stdout();
            let terminal = std::io::IsTerminal::is_terminal(&stdout);
            let mut out = TerminalSafe {
                inner: stdout.lock(),
                terminal,
                shown: Default::default(),
            };
            let follow = follow.then_some(std::time::Duration::from_secs(1));
            let end = admin::job_log(&mut db, &store, &id, follow, &mut out);
            out.finish()?;
            match end? {
                admin::LogEnd::Complete => {}
                admin::LogEnd::SoFar(s) => {
                    let s = serde_json::to_value(s)?;
                    eprintln!(
                        "(job {id} is {}: its log so far; --follow to keep reading)",
                        s.as_str().unwrap_or("?")
                    );
                }
                admin::LogEnd::Lost => {
                    anyhow::bail!("job {id} was lost: its lease ended without a result (above: the log that arrived while it ran)")
                }
            }
        }
        JobsCommand::Cancel { state, id } => {
            match statedir::open_db(&state)?.cancel(&id, state::now())? {
                state::Cancelled::BeforeItRan => {
                    eprintln!("job {id} cancelled before it ran: recorded finished (refused)")
                }
                state::Cancelled::Requested => eprintln!(
                    "job {id} is running: its runner stops it at its next poll and reports what ran"
                ),
            }
        }
        JobsCommand::PruneOutputs { state, older_than } => {
            let db = statedir::open_db(&state)?;
            let store = OutputStore::open(&state, OutputLimits::default())?;
            let before = state::now().saturating_sub(older_than.as_secs());
            let (mut jobs, mut bytes, mut failed) = (0u64, 0u64, 0u64);
            for id in db.jobs_ended_before(before)? {
                // One job that cannot be pruned (a file another user made, say) does not keep
                // the rest from being pruned.
                match store.remove_job(&id) {
                    Ok(Some(freed)) => {
                        jobs += 1;
                        bytes += freed;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        eprintln!("job {id}: {:#}", anyhow::Error::from(e));
                        failed += 1;
                    }
                }
            }
            eprintln!("removed the stored outputs of {jobs} job(s), {bytes} bytes");
            if failed > 0 {
                anyhow::bail!("the outputs of {failed} job(s) could not be removed (above)");
            }
        }
    }
    Ok(())
}

/// Standard output that shows a job's control characters in caret notation when it is a
/// terminal (`bulwark_protocol::terminal`).
struct TerminalSafe<W: std::io::Write> {
    inner: W,
    terminal: bool,
    shown: bulwark_protocol::terminal::VisibleStream,
}

impl<W: std::io::Write> TerminalSafe<W> {
    /// Writes what is held back for the next write, at the end.
    fn finish(&mut self) -> std::io::Result<()> {
        let held = self.shown.finish();
        self.inner.write_all(&held)?;
        self.inner.flush()
    }
}

impl<W: std::io::Write> std::io::Write for TerminalSafe<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.terminal {
            let shown = self.shown.show(buf);
            self.inner.write_all(&shown)?;
            Ok(buf.len())
        } else {
            self.inner.write(buf)
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Completes at the first SIGTERM or SIGINT (installed before serving, so a signal that comes
/// early is not lost to the default action).
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        eprintln!("{name}: no new connections; finishing the requests in flight");
    })
}
