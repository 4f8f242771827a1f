//! What the operator's commands (`bulwark-coordinator jobs ...`) do beyond the database: a
//! spec file read and checked for `jobs submit`, the provenance export's files, a job's log
//! followed as it grows, and text from runners made safe for a terminal.

use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use bulwark_protocol::control::JobState;
use sha2::{Digest, Sha256};

use crate::outputs::OutputStore;
use crate::state::Db;

/// A time in seconds since the epoch as RFC 3339 UTC (`2026-11-27T10:00:00Z`), as
/// `runners list` shows it.
pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// The largest spec file `jobs submit` reads: what `bulwark run` reads (the runner's
/// `MAX_SPEC_BYTES`).
pub const MAX_SPEC_FILE_BYTES: u64 = 1 << 20;

/// Reads a TOML job spec for `jobs submit` and checks it exactly as `POST /v1/jobs` does
/// ([`crate::api::check_spec`]). The error names the file, then the field, as the API's
/// `400` names the field.
pub fn read_spec(path: &std::path::Path) -> Result<bulwark_protocol::JobSpec, String> {
    let at = |reason: String| format!("{}: {reason}", path.display());
    // Never blocked by a fifo or a terminal given by mistake: a regular file or nothing.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| at(e.to_string()))?;
    if !file.metadata().map_err(|e| at(e.to_string()))?.is_file() {
        return Err(at("refused: not a regular file".into()));
    }
    let mut text = String::new();
    file.take(MAX_SPEC_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| at(e.to_string()))?;
    if text.len() as u64 > MAX_SPEC_FILE_BYTES {
        return Err(at(format!(
            "refused: larger than {MAX_SPEC_FILE_BYTES} bytes, the most a runner takes"
        )));
    }
    let spec = bulwark_protocol::JobSpec::from_toml_str(&text).map_err(|e| at(e.to_string()))?;
    crate::api::check_spec(&spec).map_err(at)?;
    Ok(spec)
}

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

/// Writes job `id`'s `job.log` to `out`: the log its result lists, or, while it runs (or
/// after it was lost), what its live log holds (docs/control-plane.md, "Outputs"). With
/// `follow`, writes what arrives every `follow` until the job has ended. The live log is the
/// beginning of the final one, so what is written is the final log; should a runner have
/// sent a live log that is not (it would have to be compromised), a marker line says so and
/// the final log follows whole. `Err` when there is no such job, or a stored log cannot be
/// read.
pub fn job_log(
    db: &mut Db,
    store: &OutputStore,
    id: &str,
    follow: Option<Duration>,
    out: &mut dyn Write,
) -> anyhow::Result<LogEnd> {
    let mut written = 0u64;
    let mut shown = Sha256::new();
    loop {
        let job = db
            .job(id, crate::state::now())?
            .ok_or_else(|| anyhow::anyhow!("job {id} not found"))?;
        let end = match (&job.result, job.state) {
            (Some(result), _) => {
                if let Some(log) = result.logs.iter().find(|l| l.name == "job.log") {
                    let (mut file, _) = store.open_blob(id, &log.sha256)?.ok_or_else(|| {
                        anyhow::anyhow!("job {id}: its job.log is not stored here (pruned)")
                    })?;
                    if written > 0 {
                        let mut head = Sha256::new();
                        copy_from(&mut file, 0, Some(written), &mut std::io::sink(), &mut head)?;
                        if head.finalize() != shown.finalize() {
                            writeln!(out, "\n[bulwark: the log the job's result lists is not what its live log showed above; here it is whole]")?;
                            written = 0;
                        }
                    }
                    copy_from(&mut file, written, None, out, &mut Sha256::new())?;
                }
                out.flush()?;
                return Ok(LogEnd::Complete);
            }
            (None, state) => {
                if let Some((mut file, _)) = store.open_live_log(id)? {
                    written += copy_from(&mut file, written, None, out, &mut shown)?;
                }
                match state {
                    JobState::Lost => Some(LogEnd::Lost),
                    _ => follow.is_none().then_some(LogEnd::SoFar(state)),
                }
            }
        };
        out.flush()?;
        if let Some(end) = end {
            return Ok(end);
        }
        std::thread::sleep(follow.unwrap_or_default());
    }
}

/// Writes `file` from `offset`, `len` bytes or to its end, to `out`, hashing what it writes
/// into `hash`; returns how many bytes that was.
fn copy_from(
    file: &mut std::fs::File,
    offset: u64,
    len: Option<u64>,
    out: &mut dyn Write,
    hash: &mut Sha256,
) -> anyhow::Result<u64> {
    file.seek(std::io::SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; 64 << 10];
    let mut done = 0u64;
    loop {
        let want = len.map_or(buf.len() as u64, |l| (l - done).min(buf.len() as u64));
        let n = match file.read(&mut buf[..want as usize]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        hash.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        done += n as u64;
    }
    Ok(done)
}

/// What a runner reported (an artifact's name, a status), made safe for the operator's
/// terminal by `bulwark_protocol::terminal::escape`, as the runner's own CLI shows the same
/// names: control characters and the marks that hide or reorder text are shown escaped
/// (`\u{1b}`, `\u{202e}`), letters of any script as they are.
pub fn printable(text: &str) -> String {
    bulwark_protocol::terminal::escape(text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outputs::OutputLimits;
    use crate::state::Runner;
    use bulwark_protocol::control::{LogFile, ResultReport};
    use bulwark_protocol::Trust;

    const JOB: &str = "job-0123456789abcdef0123456789abcdef";

    #[test]
    fn a_spec_that_is_not_a_regular_file_is_refused_without_waiting() {
        let dir = std::env::temp_dir().join(format!("bulwark-submit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("job.toml");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = read_spec(&fifo).unwrap_err();
        assert!(e.ends_with("job.toml: refused: not a regular file"), "{e}");
        let e = read_spec(&dir).unwrap_err();
        assert!(e.contains("refused: not a regular file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn times_are_shown_as_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    /// A state directory with one runner `r1`, job [`JOB`] leased to it at `at` (seconds), and
    /// an output store.
    fn leased_at(tmp: &crate::testutil::TempDir, at: u64) -> (Db, OutputStore) {
        let mut db =
            Db::create(&tmp.path().join("coordinator.db"), "https://ci.example.com").unwrap();
        db.add_registration_token("token", at + 100).unwrap();
        let runner = Runner {
            id: "r1".into(),
            name: "host-1".into(),
            public_key: "unused here".into(),
            registered_at: at,
            removed_at: None,
        };
        db.register_runner("token", &runner, at).unwrap();
        let spec = crate::state::tests::spec(Some("1m"));
        db.submit_job(JOB, &spec, Trust::Untrusted, at).unwrap();
        db.lease("r1", at).unwrap().unwrap();
        let store = OutputStore::open(tmp.path(), OutputLimits::default()).unwrap();
        (db, store)
    }

    #[test]
    fn a_lost_jobs_log_is_what_arrived_while_it_ran() {
        let tmp = crate::testutil::TempDir::new("log-lost");
        // Leased long ago: the lease is over, the job lost.
        let (mut db, store) = leased_at(&tmp, 100);
        store.append_live_log(JOB, 0, b"compiling\n").unwrap();
        let mut out = Vec::new();
        let end = job_log(&mut db, &store, JOB, None, &mut out).unwrap();
        assert_eq!(end, LogEnd::Lost);
        assert_eq!(out, b"compiling\n");
        let e = job_log(
            &mut db,
            &store,
            "job-ffffffffffffffffffffffffffffffff",
            None,
            &mut out,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not found"), "{e}");
    }

    /// What a follower writes to: the bytes, and a message on `first` once some were written.
    struct Signalling {
        bytes: Vec<u8>,
        first: Option<std::sync::mpsc::Sender<()>>,
    }

    impl std::io::Write for Signalling {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.bytes.extend_from_slice(buf);
            if !buf.is_empty() {
                if let Some(first) = self.first.take() {
                    let _ = first.send(());
                }
            }
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Follows job [`JOB`], whose live log holds `live`, while another connection records a
    /// result whose job.log is `last` once the follower has written the live log (or after
    /// 30 s, so that a follower that never does fails the test rather than hang it); returns
    /// what was written.
    fn follow_to_result(live: &[u8], last: &[u8]) -> Vec<u8> {
        let tmp = crate::testutil::TempDir::new("log-follow");
        let (mut db, store) = leased_at(&tmp, crate::state::now());
        store.append_live_log(JOB, 0, live).unwrap();
        let sha = crate::auth::sha256_hex(last);
        let mut upload = store
            .begin(JOB, &sha, store.reserve(JOB, last.len() as u64).unwrap())
            .unwrap();
        upload.write(last).unwrap();
        upload.finish().unwrap();
        let path = tmp.path().join("coordinator.db");
        let size = last.len() as u64;
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let reporter = std::thread::spawn(move || {
            let _ = first_rx.recv_timeout(Duration::from_secs(30));
            let report = ResultReport {
                result: serde_json::json!({"status": "succeeded"}),
                provenance: None,
                logs: vec![LogFile {
                    name: "job.log".into(),
                    size,
                    sha256: sha,
                }],
            };
            let mut db = Db::open(&path).unwrap();
            db.record_result(JOB, "r1", &report, crate::state::now())
                .unwrap();
        });
        let mut out = Signalling {
            bytes: Vec::new(),
            first: Some(first_tx),
        };
        let end = job_log(
            &mut db,
            &store,
            JOB,
            Some(Duration::from_millis(50)),
            &mut out,
        );
        reporter.join().unwrap();
        assert_eq!(end.unwrap(), LogEnd::Complete);
        out.bytes
    }

    #[test]
    fn a_followed_log_is_the_final_log_and_a_live_log_that_was_not_its_beginning_is_flagged() {
        assert_eq!(
            follow_to_result(b"step 1\n", b"step 1\nstep 2\n"),
            b"step 1\nstep 2\n"
        );
        let out = follow_to_result(b"all is well\n", b"step 1\nstep 2\n");
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("all is well\n\n[bulwark: the log the job's result lists is not what")
                && text.ends_with("here it is whole]\nstep 1\nstep 2\n"),
            "{text}"
        );
    }

    #[test]
    fn a_runners_text_reaches_the_terminal_escaped() {
        assert_eq!(printable("succeeded"), "succeeded");
        assert_eq!(printable("ok\x1b]0;owned\x07"), "ok\\u{1b}]0;owned\\u{7}");
        assert_eq!(printable("a\u{202e}b\n"), "a\\u{202e}b\\n");
        assert_eq!(
            printable("dist/café\u{200b}\u{2066}.tar.gz"),
            "dist/café\\u{200b}\\u{2066}.tar.gz"
        );
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
