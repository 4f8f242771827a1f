//! `bulwark inventory add` and `bulwark inventory query`: printing and exit statuses.

use std::path::{Path, PathBuf};

use super::{exit, Query};
use crate::cli::InventoryCommand;
use crate::provenance::keys::PublicKey;
use crate::verify::escape;

/// Runs an inventory command; returns the exit status.
pub fn run(cmd: InventoryCommand) -> u8 {
    match cmd {
        InventoryCommand::Add {
            keys,
            index,
            config,
            paths,
        } => add(&keys, index, config.as_deref(), &paths),
        InventoryCommand::Query {
            index,
            config,
            digest,
            commit,
            uri,
            name,
            builder,
            json,
        } => {
            let query = Query {
                digest,
                commit,
                uri,
                name,
                builder,
            };
            query_cmd(query, index, config.as_deref(), json)
        }
    }
}

/// The index named, or the state directory's.
fn index_path(index: Option<PathBuf>, config: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(i) = index {
        return Ok(i);
    }
    let loaded = crate::config::load(config)?;
    let dirs = crate::config::Dirs::resolve(&loaded.config)?;
    Ok(dirs.state.join(super::INDEX_NAME))
}

fn add(keys: &[PathBuf], index: Option<PathBuf>, config: Option<&Path>, paths: &[PathBuf]) -> u8 {
    let prepared = (|| -> anyhow::Result<(PathBuf, Vec<super::FileOutcome>)> {
        let keys = keys
            .iter()
            .map(|k| PublicKey::load(k))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let index = index_path(index, config)?;
        Ok((index, super::read_verified(paths, &keys)?))
    })();
    let (index, outcomes) = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bulwark: inventory add: {e:#}");
            return exit::USAGE;
        }
    };
    let mut records = Vec::new();
    let mut refused = 0;
    for o in outcomes {
        match o.records {
            Ok(r) => records.extend(r),
            Err(why) => {
                refused += 1;
                // The reason can quote what nothing signed (a forged envelope's key id) and the
                // path is whatever name the collected directory holds: escaped, so that neither
                // prints a line of its own (`indexed …`).
                println!(
                    "{}",
                    escape(&format!("REFUSED {}: {why}", o.path.display()))
                );
            }
        }
    }
    let found = records.len();
    match super::append(&index, &records) {
        Ok(added) => {
            println!(
                "indexed {added} new statement(s) of {found} verified into {}{}",
                index.display(),
                if refused > 0 {
                    format!("; {refused} file(s) refused")
                } else {
                    String::new()
                }
            );
            if refused > 0 {
                exit::NONE
            } else {
                exit::OK
            }
        }
        Err(e) => {
            eprintln!("bulwark: inventory add: {e:#}");
            exit::USAGE
        }
    }
}

fn query_cmd(mut query: Query, index: Option<PathBuf>, config: Option<&Path>, json: bool) -> u8 {
    if let Err(e) = query.check() {
        eprintln!("bulwark: inventory query: {e}");
        return exit::USAGE;
    }
    let index = match index_path(index, config) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("bulwark: inventory query: {e:#}");
            return exit::USAGE;
        }
    };
    // No index yet: nothing was recorded, so nothing used it (said, not an error).
    if std::fs::symlink_metadata(&index).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        eprintln!(
            "bulwark: inventory query: no inventory at {} yet: nothing has been recorded there",
            index.display()
        );
        return exit::NONE;
    }
    let hits = super::search(&index, &query);
    let hits = match hits {
        Ok(h) => h,
        Err(e) => {
            eprintln!("bulwark: inventory query: {e:#}");
            return exit::USAGE;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&hits).unwrap_or_else(|_| "[]".into())
        );
    } else {
        for h in &hits {
            let matched: Vec<String> = h
                .matched
                .iter()
                .map(|d| {
                    let name = d.name.as_deref().unwrap_or("?");
                    match &d.uri {
                        Some(u) => format!("{name} ({u})"),
                        None => name.to_string(),
                    }
                })
                .collect();
            // Names and ids come from signed statements, but a job chose its output names:
            // printed escaped, control characters and the marks that reorder text (U+202E)
            // alike, as `bulwark verify` prints them.
            println!(
                "{}  {}  built {} by {}{} (invocation {}; {}){}",
                escape(&h.artifact.sha256),
                escape(&h.artifact.name),
                escape(&h.finished),
                escape(&h.builder_id),
                h.trust
                    .as_deref()
                    .map(|t| format!(", {}", escape(t)))
                    .unwrap_or_default(),
                escape(&h.invocation_id),
                escape(&h.provenance),
                if matched.is_empty() {
                    String::new()
                } else {
                    format!("; used {}", escape(&matched.join(", ")))
                }
            );
        }
        eprintln!("{} artifact(s) found", hits.len());
    }
    if hits.is_empty() {
        exit::NONE
    } else {
        exit::OK
    }
}
