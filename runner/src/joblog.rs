//! The job's log: everything its processes write to stdout and stderr.
//!
//! A job controls this stream entirely, so the runner bounds what it keeps: at most
//! `limits.log_cap` bytes are stored (and echoed to the terminal); past that the stream is
//! still drained, so the job never blocks on a full pipe, but dropped, and the stored log ends
//! with a truncation marker saying how much was dropped. The file is written under a temporary
//! name and renamed when the stream ends. A trusted job's credential values are masked before
//! anything is stored or echoed (`creds::mask`); past the cap the stream is only counted.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// What the log capture kept and dropped.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogStats {
    /// Bytes stored.
    pub kept: u64,
    /// Bytes dropped past the cap.
    pub dropped: u64,
}

/// The marker line appended to a truncated log.
pub fn truncation_marker(cap: u64, dropped: u64) -> String {
    format!("\n[bulwark: job log truncated at {cap} bytes (limits.log_cap); {dropped} more bytes were dropped]\n")
}

/// `<dir>/job.log` being written: fed chunk by chunk with [`LogCapture::take`] as the job's
/// stream arrives (the runner reads it in the same loop as the helper's status channel, so a
/// job needs no thread of the runner's), stored up to the cap, echoed when asked.
#[derive(Debug)]
pub struct LogCapture {
    file: File,
    partial: PathBuf,
    final_path: PathBuf,
    cap: u64,
    echo: bool,
    /// The echo goes to a terminal: control characters are shown, not sent (see
    /// [`bulwark_protocol::terminal::visible_controls`]). Otherwise (a file or pipe:
    /// `bulwark run > build.log`, a CI system's log collector) the echo is the job's bytes as they are, the same bytes as
    /// `job.log`, deliberately: what reads them is a program the operator chose, and the
    /// escaped form would corrupt what it relies on (colours a CI log viewer renders, binary
    /// or non-UTF-8 output, tools that parse the build's messages). Escaping would not make
    /// the stream trustworthy either: a job can print a line that looks like the runner's
    /// without any control character, which is why the runner's own lines go to stderr and
    /// its verdict to `result.json`. A viewer that obeys escape sequences in a log file is
    /// shown the job's text as any log of the build would show it.
    echo_to_terminal: bool,
    /// The echo made visible, chunk after chunk.
    shown: bulwark_protocol::terminal::VisibleStream,
    stats: LogStats,
    /// The first write error; the stream is still drained after it, so the job never blocks.
    failed: Option<io::Error>,
    /// Secret values replaced before anything is stored or echoed (docs/credentials.md).
    masker: crate::creds::mask::Masker,
}

/// The log's name in the output directory while it is written.
pub const PARTIAL_NAME: &str = ".job.log.partial";

impl LogCapture {
    /// Creates `<dir>/.job.log.partial` (or truncates the one `bulwark run` made to claim the
    /// directory), renamed to `job.log` by [`LogCapture::finish`].
    pub fn create(dir: &Path, cap: u64, echo: bool) -> io::Result<LogCapture> {
        let partial = dir.join(PARTIAL_NAME);
        Ok(LogCapture {
            file: File::create(&partial)?,
            partial,
            final_path: dir.join("job.log"),
            cap,
            echo,
            echo_to_terminal: echo && std::io::IsTerminal::is_terminal(&io::stdout()),
            shown: Default::default(),
            stats: LogStats::default(),
            failed: None,
            masker: crate::creds::mask::Masker::default(),
        })
    }

    /// Masks `values` too, in everything stored and echoed from now on.
    pub fn mask_more<'a>(&mut self, values: impl IntoIterator<Item = &'a str>) {
        self.masker.add(values);
    }

    /// Masks the values `masker` knows in everything stored and echoed from now on.
    pub fn masking(mut self, masker: crate::creds::mask::Masker) -> LogCapture {
        self.masker = masker;
        self
    }

    /// Takes the next chunk of the stream: masked, then stored (and echoed) up to the cap,
    /// counted past it.
    pub fn take(&mut self, data: &[u8]) {
        // Past the cap nothing is stored, so nothing needs masking: the job's flood is only
        // counted, at copying speed, whatever it holds.
        if self.masker.is_empty() || self.stats.kept >= self.cap {
            self.store(data);
        } else {
            let masked = self.masker.feed(data);
            self.store(&masked);
        }
    }

    fn store(&mut self, data: &[u8]) {
        let room = self.cap.saturating_sub(self.stats.kept);
        let keep = (data.len() as u64).min(room) as usize;
        if keep > 0 {
            if self.failed.is_none() {
                if let Err(e) = self.file.write_all(&data[..keep]) {
                    self.failed = Some(e);
                }
            }
            if self.echo {
                let mut out = io::stdout().lock();
                if self.echo_to_terminal {
                    let _ = out.write_all(&self.shown.show(&data[..keep]));
                } else {
                    let _ = out.write_all(&data[..keep]);
                }
                let _ = out.flush();
            }
        }
        self.stats.kept += keep as u64;
        self.stats.dropped += (data.len() - keep) as u64;
    }

    /// Reading the stream failed: [`LogCapture::finish`] reports it.
    pub fn fail(&mut self, e: io::Error) {
        self.failed.get_or_insert(e);
    }

    /// The stream has ended: appends the truncation marker if anything was dropped and
    /// renames the file into place. Not fsynced: the log is as durable as the outputs (see
    /// `fsutil::write_replace`).
    pub fn finish(mut self) -> io::Result<LogStats> {
        let held = self.masker.finish();
        if !held.is_empty() {
            self.store(&held);
        }
        if self.echo_to_terminal {
            let _ = io::stdout().lock().write_all(&self.shown.finish());
        }
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if self.stats.dropped > 0 {
            let marker = truncation_marker(self.cap, self.stats.dropped);
            self.file.write_all(marker.as_bytes())?;
            if self.echo {
                let _ = io::stdout().lock().write_all(marker.as_bytes());
            }
        }
        fs::rename(&self.partial, &self.final_path)?;
        Ok(self.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partial_log_is_a_name_no_output_may_take() {
        assert!(bulwark_protocol::RESERVED_OUTPUT_NAMES.contains(&PARTIAL_NAME));
    }
    use std::io::Read;

    /// Copies all of `stream` into `<dir>/job.log` through a [`LogCapture`].
    fn capture_all<R: Read>(
        mut stream: R,
        dir: &Path,
        cap: u64,
        echo: bool,
    ) -> io::Result<LogStats> {
        let mut log = LogCapture::create(dir, cap, echo)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => log.take(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        log.finish()
    }

    #[test]
    fn a_secret_crossing_the_cap_is_masked_and_a_flood_past_it_is_only_counted() {
        let dir = crate::tools::testutil::TempDir::named("bulwark-log-mask");
        let secret = "SESSIONTOKEN0123456789";
        let masker = crate::creds::mask::Masker::new([secret]);
        let mut log = LogCapture::create(&dir, 100, false)
            .unwrap()
            .masking(masker);
        log.take(&[b'x'; 95]);
        // The secret arrives split, across the cap.
        log.take(&secret.as_bytes()[..4]);
        log.take(&secret.as_bytes()[4..]);
        // (Each on a line of its own: secrets back to back are one masked stretch.)
        for _ in 0..100 {
            log.take(secret.as_bytes());
            log.take(b"\n");
        }
        let stats = log.finish().unwrap();
        let text = fs::read_to_string(dir.join("job.log")).unwrap();
        assert!(!text.contains("SESS") && !text.contains("0123"), "{text}");
        assert!(
            text.starts_with(&format!("{}***", "x".repeat(95))),
            "{text}"
        );
        assert_eq!(stats.kept, 100);
        assert!(text.contains("truncated"), "{text}");
    }

    #[test]
    fn log_is_capped_and_ends_with_a_marker() {
        let dir = crate::tools::testutil::TempDir::named("bulwark-log");
        let data = vec![b'x'; 10_000];
        let stats = capture_all(io::Cursor::new(data), &dir, 1000, false).unwrap();
        assert_eq!(stats.kept, 1000);
        assert_eq!(stats.dropped, 9000);
        let log = fs::read_to_string(dir.join("job.log")).unwrap();
        assert!(log.starts_with(&"x".repeat(1000)));
        assert!(log.ends_with(&truncation_marker(1000, 9000)));
        assert!(!dir.join(".job.log.partial").exists());
    }
}
