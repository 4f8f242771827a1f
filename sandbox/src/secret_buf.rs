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
}
