//! The job's log: everything its processes write to stdout and stderr.
//!
//! A job controls this stream entirely, so the runner bounds what it keeps: at most
//! `limits.log_cap` bytes are stored (and echoed to the terminal); past that the stream is
//! still drained, so the job never blocks on a full pipe, but dropped, and the stored log ends
//! with a truncation marker saying how much was dropped. The file is written under a temporary
//! name and renamed when the stream ends.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

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

/// Starts a thread copying `stream` into `<dir>/job.log` (and to `echo` when given).
pub fn capture<R: Read + Send + 'static>(
    stream: R,
    dir: &Path,
    cap: u64,
    echo: bool,
) -> io::Result<JoinHandle<io::Result<LogStats>>> {
    let final_path = dir.join("job.log");
    let partial: PathBuf = dir.join(".job.log.partial");
    let file = File::create(&partial)?;
    std::thread::Builder::new()
        .name("job-log".into())
        .spawn(move || {
            let stats = copy_capped(stream, file, cap, echo)?;
            fs::rename(&partial, &final_path)?;
            Ok(stats)
        })
}

fn copy_capped<R: Read>(
    mut stream: R,
    mut file: File,
    cap: u64,
    echo: bool,
) -> io::Result<LogStats> {
    let mut stats = LogStats::default();
    let mut buf = vec![0u8; 64 * 1024];
    let stdout = io::stdout();
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let room = cap.saturating_sub(stats.kept);
        let keep = (n as u64).min(room) as usize;
        if keep > 0 {
            file.write_all(&buf[..keep])?;
            if echo {
                let mut out = stdout.lock();
                let _ = out.write_all(&buf[..keep]);
                let _ = out.flush();
            }
            stats.kept += keep as u64;
        }
        stats.dropped += (n - keep) as u64;
    }
    if stats.dropped > 0 {
        let marker = truncation_marker(cap, stats.dropped);
        file.write_all(marker.as_bytes())?;
        if echo {
            let _ = stdout.lock().write_all(marker.as_bytes());
        }
    }
    // Not fsynced: the log is as durable as the outputs (see `fsutil::write_replace`).
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_is_capped_and_ends_with_a_marker() {
        let dir = std::env::temp_dir().join(format!(
            "bulwark-log-{}-{}",
            std::process::id(),
            crate::fsutil::random_hex(4)
        ));
        fs::create_dir_all(&dir).unwrap();
        let data = vec![b'x'; 10_000];
        let h = capture(io::Cursor::new(data), &dir, 1000, false).unwrap();
        let stats = h.join().unwrap().unwrap();
        assert_eq!(stats.kept, 1000);
        assert_eq!(stats.dropped, 9000);
        let log = fs::read_to_string(dir.join("job.log")).unwrap();
        assert!(log.starts_with(&"x".repeat(1000)));
        assert!(log.ends_with(&truncation_marker(1000, 9000)));
        assert!(!dir.join(".job.log.partial").exists());
    }
}
