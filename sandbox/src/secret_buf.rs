//! A byte buffer for text that may hold secrets (a trusted job's spec carries its
//! credentials), that leaves no copy behind in freed memory.
//!
//! A `Vec` that grows reallocates: the old allocation is freed as it was, with whatever was
//! written so far still in it. [`SecretBuf`] grows by allocating the larger buffer itself,
//! copying, and zeroing the old one before it is freed, and zeroes its whole capacity when
//! dropped. The runner encodes the sandbox spec into one; the helper reads it into one.

use std::io::{self, Write};

use zeroize::Zeroizing;

/// What a spec usually fits in (a few KiB): no growth, so no copy, on a normal launch.
pub const INITIAL_CAPACITY: usize = 64 << 10;

/// Bytes zeroed wherever they were: on growth (the old buffer) and when dropped.
#[derive(Default)]
pub struct SecretBuf(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for SecretBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBuf({} bytes)", self.0.len())
    }
}

impl SecretBuf {
    /// An empty buffer of [`INITIAL_CAPACITY`].
    pub fn new() -> SecretBuf {
        SecretBuf(Zeroizing::new(Vec::with_capacity(INITIAL_CAPACITY)))
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Room for `more` bytes, by moving to a larger buffer and zeroing the old one.
    fn reserve(&mut self, more: usize) {
        let need = self.0.len().saturating_add(more);
        if need <= self.0.capacity() {
            return;
        }
        let mut larger = Vec::with_capacity(need.max(self.0.capacity().saturating_mul(2)));
        larger.extend_from_slice(&self.0);
        // The old buffer is zeroed, all of its capacity, when `Zeroizing` drops it here.
        self.0 = Zeroizing::new(larger);
    }

    /// `value` as one JSON line (its newline included), for a stream that [`SecretLines`]
    /// splits: the sandbox spec, a credential handoff or update.
    pub fn json_line(value: &impl serde::Serialize) -> Result<SecretBuf, serde_json::Error> {
        let mut line = SecretBuf::new();
        serde_json::to_writer(&mut line, value)?;
        line.extend(b"\n");
        Ok(line)
    }

    /// How many bytes it holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn extend(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        self.0.extend_from_slice(bytes);
    }
}

impl Write for SecretBuf {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.extend(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Splits a stream that may carry secrets into lines (one JSON document each: the sandbox spec,
/// then credential updates), each line in a [`SecretBuf`] of its own, and the bytes of a line
/// not yet complete in one too. A line longer than its bound is an error, and what was held
/// of it is zeroed.
#[derive(Debug)]
pub struct SecretLines {
    pending: SecretBuf,
    max: usize,
}

impl SecretLines {
    /// Lines of at most `max` bytes.
    pub fn new(max: usize) -> SecretLines {
        SecretLines {
            pending: SecretBuf::new(),
            max,
        }
    }

    /// Takes the next bytes of the stream; returns the lines they complete, without their
    /// newline.
    pub fn take(&mut self, data: &[u8]) -> io::Result<Vec<SecretBuf>> {
        let mut lines = Vec::new();
        for piece in data.split_inclusive(|b| *b == b'\n') {
            let (body, ends) = match piece.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (piece, false),
            };
            if self.pending.len().saturating_add(body.len()) > self.max {
                // Lines this call completed before are dropped too: every producer of these
                // streams writes lines far below the bound, so this is a broken stream.
                self.pending = SecretBuf::default();
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a line longer than {} bytes", self.max),
                ));
            }
            self.pending.extend(body);
            if ends {
                lines.push(std::mem::take(&mut self.pending));
            }
        }
        Ok(lines)
    }

    /// Reads `fd` until a line is complete and returns it, with any lines that came with it;
    /// `Ok(None)` at the end of the stream. A last line without a newline counts. Reads the
    /// descriptor itself: nothing of the stream waits in a buffer of std's (`Stdin`'s), where
    /// later reads of the descriptor would not see it and nothing would zero it.
    pub fn read_line(
        &mut self,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> io::Result<Option<Vec<SecretBuf>>> {
        loop {
            match self.read_from(fd)? {
                None if self.pending.is_empty() => return Ok(None),
                None => return Ok(Some(vec![std::mem::take(&mut self.pending)])),
                Some(lines) if !lines.is_empty() => return Ok(Some(lines)),
                Some(_) => {}
            }
        }
    }

    /// One `read` of `fd` (reported readable): the lines it completes; `Ok(None)` at the end
    /// of the stream. An interrupted or would-block read completes none.
    pub fn read_from(
        &mut self,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> io::Result<Option<Vec<SecretBuf>>> {
        let mut chunk = Zeroizing::new([0u8; 8192]);
        match nix::unistd::read(fd, &mut chunk[..]) {
            Ok(0) => Ok(None),
            Ok(n) => self.take(&chunk[..n]).map(Some),
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => Ok(Some(Vec::new())),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether part of a line is held.
    pub fn is_mid_line(&self) -> bool {
        !self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn it_grows_without_losing_bytes() {
        let mut b = SecretBuf::new();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        b.write_all(&big[..10]).unwrap();
        b.write_all(&big[10..]).unwrap();
        assert_eq!(b.as_bytes(), &big[..]);
        assert!(b.0.capacity() >= big.len());
    }

    /// The read end of a pipe holding `bytes`, its write end closed.
    fn pipe_of(bytes: &[u8]) -> std::os::fd::OwnedFd {
        let (r, w) = nix::unistd::pipe().unwrap();
        std::fs::File::from(w).write_all(bytes).unwrap();
        r
    }

    #[test]
    fn lines_split_across_reads_come_out_whole_and_an_overlong_one_is_refused() {
        let mut l = SecretLines::new(16);
        assert!(l.take(b"{\"a\":").unwrap().is_empty());
        assert!(l.is_mid_line());
        let lines = l.take(b"1}\n{}\n{\"b\"").unwrap();
        let got: Vec<&[u8]> = lines.iter().map(SecretBuf::as_bytes).collect();
        assert_eq!(got, [&b"{\"a\":1}"[..], b"{}"]);
        let lines = l.read_line(pipe_of(b":2}\n").as_fd()).unwrap().unwrap();
        assert_eq!(lines[0].as_bytes(), b"{\"b\":2}");
        // The end of the stream ends a last line without a newline, then says so.
        let mut l = SecretLines::new(16);
        let r = pipe_of(b"{}");
        let lines = l.read_line(r.as_fd()).unwrap().unwrap();
        assert_eq!(lines[0].as_bytes(), b"{}");
        assert!(l.read_line(r.as_fd()).unwrap().is_none());
        let mut l = SecretLines::new(4);
        assert!(l.take(b"123").is_ok());
        let e = l.take(b"45\n").unwrap_err();
        assert!(e.to_string().contains("longer than 4 bytes"), "{e}");
        assert!(!l.is_mid_line());
    }
}
