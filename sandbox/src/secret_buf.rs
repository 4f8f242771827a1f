//! A byte buffer for text that may hold secrets (a trusted job's spec carries its
//! credentials), that leaves no copy behind in freed memory.
//!
//! A `Vec` that grows reallocates: the old allocation is freed as it was, with whatever was
//! written so far still in it. [`SecretBuf`] grows by allocating the larger buffer itself,
//! copying, and zeroing the old one before it is freed, and zeroes its whole capacity when
//! dropped. The runner encodes the sandbox spec into one; the helper reads it into one.

use std::io::{self, Read, Write};

use zeroize::{Zeroize, Zeroizing};

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

    /// An empty buffer of `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> SecretBuf {
        SecretBuf(Zeroizing::new(Vec::with_capacity(capacity)))
    }

    /// How many bytes it holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Reads `from` to its end.
    pub fn read_all(from: &mut impl Read) -> io::Result<SecretBuf> {
        let mut buf = SecretBuf::new();
        let mut chunk = [0u8; 8192];
        let result = loop {
            match from.read(&mut chunk) {
                Ok(0) => break Ok(()),
                Ok(n) => buf.extend(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        chunk.zeroize();
        result.map(|()| buf)
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
                self.pending = SecretBuf::with_capacity(0);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a line longer than {} bytes", self.max),
                ));
            }
            self.pending.extend(body);
            if ends {
                lines.push(std::mem::replace(
                    &mut self.pending,
                    SecretBuf::with_capacity(0),
                ));
            }
        }
        Ok(lines)
    }

    /// Reads `from` until a line is complete and returns it, with any lines that came with
    /// it; `Ok(None)` at the end of the stream. A last line without a newline counts.
    pub fn read_line(&mut self, from: &mut impl Read) -> io::Result<Option<Vec<SecretBuf>>> {
        let mut chunk = Zeroizing::new([0u8; 8192]);
        loop {
            match from.read(&mut chunk[..]) {
                Ok(0) if self.pending.is_empty() => return Ok(None),
                Ok(0) => {
                    let last = std::mem::replace(&mut self.pending, SecretBuf::with_capacity(0));
                    return Ok(Some(vec![last]));
                }
                Ok(n) => {
                    let lines = self.take(&chunk[..n])?;
                    if !lines.is_empty() {
                        return Ok(Some(lines));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
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

    #[test]
    fn it_grows_without_losing_bytes_and_reads_a_stream_whole() {
        let mut b = SecretBuf::new();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        b.write_all(&big[..10]).unwrap();
        b.write_all(&big[10..]).unwrap();
        assert_eq!(b.as_bytes(), &big[..]);
        assert!(b.0.capacity() >= big.len());
        let read = SecretBuf::read_all(&mut &big[..]).unwrap();
        assert_eq!(read.as_bytes(), &big[..]);
    }

    #[test]
    fn lines_split_across_reads_come_out_whole_and_an_overlong_one_is_refused() {
        let mut l = SecretLines::new(16);
        assert!(l.take(b"{\"a\":").unwrap().is_empty());
        assert!(l.is_mid_line());
        let lines = l.take(b"1}\n{}\n{\"b\"").unwrap();
        let got: Vec<&[u8]> = lines.iter().map(SecretBuf::as_bytes).collect();
        assert_eq!(got, [&b"{\"a\":1}"[..], b"{}"]);
        let lines = l.read_line(&mut &b":2}\n"[..]).unwrap().unwrap();
        assert_eq!(lines[0].as_bytes(), b"{\"b\":2}");
        // The end of the stream ends a last line without a newline, then says so.
        let mut l = SecretLines::new(16);
        let lines = l.read_line(&mut &b"{}"[..]).unwrap().unwrap();
        assert_eq!(lines[0].as_bytes(), b"{}");
        assert!(l.read_line(&mut &b""[..]).unwrap().is_none());
        let mut l = SecretLines::new(4);
        assert!(l.take(b"123").is_ok());
        let e = l.take(b"45\n").unwrap_err();
        assert!(e.to_string().contains("longer than 4 bytes"), "{e}");
        assert!(!l.is_mid_line());
    }
}
