//! What the operator's commands (`bulwark-coordinator jobs ...`) do beyond the database: the
//! provenance export's files, a job's log followed as it grows, and text from runners made
//! safe for a terminal.

use std::io::{Seek, Write};
use std::time::Duration;

use bulwark_protocol::control::JobState;

use crate::outputs::OutputStore;
use crate::state::Db;

/// Writes `text` as `out/<id>.intoto.jsonl`, whole or not at all: into a temporary file,
/// synced, then linked to its name (which never replaces a file). `false` when a file with the
/// same contents is there already; an error when one with other contents is.
pub fn export_provenance(out: &std::path::Path, id: &str, text: &str) -> std::io::Result<bool> {
    let path = out.join(format!("{id}.intoto.jsonl"));
    if let Ok(existing) = std::fs::read(&path) {
        return if existing == text.as_bytes() {
            Ok(false)
        } else {
            Err(std::io::Error::other(format!(
                "{} exists and holds something else; nothing was overwritten",
                path.display()
            )))
        };
    }
    let temp = out.join(format!(".{id}.intoto.jsonl.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::hard_link(&temp, &path)
    })();
    let _ = std::fs::remove_file(&temp);
    result.map(|()| true)
}

/// How `jobs log` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogEnd {
    /// The job has a result: all of its `job.log` was written.
    Complete,
    /// The job is still queued or running (and not followed): what arrived so far was
    /// written.
    SoFar(JobState),
    /// The lease ended without a result: what arrived while it ran was written.
    Lost,
}

/// Writes job `id`'s `job.log` to `out`: the log its result lists, or, while it runs, what its
/// live log holds so far (docs/control-plane.md, "Outputs"). With `follow`, writes what
/// arrives every `follow` until the job has ended; the live log is the beginning of the
/// final one, so what is written is the final log. `Err` when there is no such job, or a
/// stored log cannot be read.
pub fn job_log(
    db: &mut Db,
    store: &OutputStore,
    id: &str,
    follow: Option<Duration>,
    out: &mut dyn Write,
) -> anyhow::Result<LogEnd> {
    let mut written = 0u64;
    loop {
        let job = db
            .job(id, crate::state::now())?
            .ok_or_else(|| anyhow::anyhow!("job {id} not found"))?;
        let end = match (&job.result, job.state) {
            (Some(result), _) => {
                if let Some(log) = result.logs.iter().find(|l| l.name == "job.log") {
                    let (file, _) = store.open_blob(id, &log.sha256)?.ok_or_else(|| {
                        anyhow::anyhow!("job {id}: its job.log is not stored here (pruned)")
                    })?;
                    copy_from(file, written, out)?;
                }
                return Ok(LogEnd::Complete);
            }
            (None, JobState::Lost) => Some(LogEnd::Lost),
            (None, state) => {
                if let Some((file, _)) = store.open_live_log(id)? {
                    written = copy_from(file, written, out)?;
                }
                follow.is_none().then_some(LogEnd::SoFar(state))
            }
        };
        out.flush()?;
        if let Some(end) = end {
            return Ok(end);
        }
        std::thread::sleep(follow.unwrap_or_default());
    }
}

/// Writes what `file` holds from `offset` to its end to `out`; returns its length then.
fn copy_from(mut file: std::fs::File, offset: u64, out: &mut dyn Write) -> anyhow::Result<u64> {
    file.seek(std::io::SeekFrom::Start(offset))?;
    let n = std::io::copy(&mut file, out)?;
    Ok(offset + n)
}

/// `text` with every character that is not printable ASCII shown as `\u{..}`: what a runner
/// reported, made safe for the operator's terminal.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c.to_string()
            } else {
                c.escape_unicode().to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runners_text_reaches_the_terminal_escaped() {
        assert_eq!(printable("succeeded"), "succeeded");
        assert_eq!(printable("ok\x1b]0;owned\x07"), "ok\\u{1b}]0;owned\\u{7}");
        assert_eq!(printable("a\u{202e}b\n"), "a\\u{202e}b\\u{a}");
    }

    #[test]
    fn an_export_never_overwrites_and_leaves_no_temporary_file() {
        let tmp = crate::testutil::TempDir::new("export");
        let out = tmp.path();
        assert!(export_provenance(out, "job-1", "{\"a\":1}\n").unwrap());
        assert!(!export_provenance(out, "job-1", "{\"a\":1}\n").unwrap());
        let e = export_provenance(out, "job-1", "{\"a\":2}\n").unwrap_err();
        assert!(e.to_string().contains("holds something else"), "{e}");
        assert_eq!(
            std::fs::read_to_string(out.join("job-1.intoto.jsonl")).unwrap(),
            "{\"a\":1}\n"
        );
        let names: Vec<_> = std::fs::read_dir(out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["job-1.intoto.jsonl"]);
    }
}
