//! `bulwark inventory add` and `bulwark inventory query`: printing and exit statuses.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{exit, Query};
use crate::cli::InventoryCommand;
use crate::provenance::keys::PublicKey;
use bulwark_protocol::terminal::{escape, quoted};

/// Runs an inventory command; returns the exit status.
pub fn run(cmd: InventoryCommand) -> u8 {
    match cmd {
        InventoryCommand::Add {
            keys,
            builder_keys,
            index,
            config,
            paths,
        } => add(
            &keys,
            builder_keys.as_deref(),
            index,
            config.as_deref(),
            &paths,
        ),
        InventoryCommand::Query {
            index,
            config,
            digest,
            commit,
            uri,
            name,
            builder,
            signer,
            json,
        } => {
            let query = Query {
                digest,
                commit,
                uri,
                name,
                builder,
                signer,
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

/// The `[builder_keys]` table of the verify policy `path`; a policy without one is an error
/// (the operator asked for builder ids to be bound, and nothing would bind them).
fn load_builder_keys(path: &Path) -> anyhow::Result<super::BuilderKeys> {
    let policy = crate::verify::policy::Policy::load(path).context("--builder-keys")?;
    policy.builder_keys.ok_or_else(|| {
        anyhow::anyhow!(
            "--builder-keys: policy {} has no [builder_keys] table; add one binding each \
             builder id to the key ids that sign for it (docs/policy.md)",
            path.display()
        )
    })
}

fn add(
    keys: &[PathBuf],
    builder_keys: Option<&Path>,
    index: Option<PathBuf>,
    config: Option<&Path>,
    paths: &[PathBuf],
) -> u8 {
    let prepared = (|| -> anyhow::Result<(PathBuf, Vec<super::FileOutcome>)> {
        let keys = keys
            .iter()
            .map(|k| PublicKey::load(k).context("--key"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let bound = builder_keys.map(load_builder_keys).transpose()?;
        let distinct: std::collections::BTreeSet<&str> = keys.iter().map(|k| k.keyid()).collect();
        if bound.is_none() && distinct.len() > 1 {
            // Each host writes its own builder id: with several keys trusted and none bound to
            // a builder, any of them could claim any builder id, and `query --builder` takes
            // that claim. Indexed anyway (refusing would lose the evidence), with the signer
            // recorded so `query --signer` can tell them apart.
            eprintln!(
                "bulwark: inventory add: warning: {} keys and no --builder-keys: builder ids are \
                 not bound to keys, so any of these keys can claim any builder id and `query \
                 --builder` answers take that claim; each record names its signer (`query \
                 --signer`); give --builder-keys POLICY.toml with a [builder_keys] table \
                 (docs/policy.md) to refuse statements a builder's key did not sign",
                distinct.len()
            );
        }
        let index = index_path(index, config)?;
        Ok((index, super::read_verified(paths, &keys, bound.as_ref())?))
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
    let answer = match super::answer(&index, &query) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bulwark: inventory query: {e:#}");
            return exit::USAGE;
        }
    };
    let hits = answer.hits;
    if answer.unknown_signer > 0 {
        // The answer may be incomplete: said, never silent.
        eprintln!(
            "bulwark: inventory query: {} record(s) were indexed before signers were recorded \
             and cannot match --signer; index their provenance again into a new index with \
             `bulwark inventory add` to record who signed them",
            answer.unknown_signer
        );
    }
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
                    let name = d.name.as_deref().map_or_else(|| "?".to_string(), quoted);
                    match &d.uri {
                        Some(u) => format!("{name} ({})", escape(u)),
                        None => name,
                    }
                })
                .collect();
            // Names and ids come from signed statements, but a job chose its output names
            // (and its tools' names): printed quoted, so that a name holding `  built … by …`
            // cannot pass for the line's own fields, and escaped, control characters and the
            // marks that reorder text (U+202E) alike, as `bulwark verify` prints them.
            // Who vouches for the builder id: the key ids that signed (unknown for records
            // indexed before signers were recorded).
            let signed = if h.signers.is_empty() {
                ", signer not recorded".to_string()
            } else {
                format!(", signed by {}", escape(&h.signers.join(" and ")))
            };
            println!(
                "{}  {}  built {} by {}{}{signed} (invocation {}; {}){}",
                escape(&h.artifact.sha256),
                quoted(&h.artifact.name),
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
                    format!("; used {}", matched.join(", "))
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
