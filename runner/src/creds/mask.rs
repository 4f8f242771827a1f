//! Masking secret values in a stream (the job's log), also when a value arrives split across
//! reads: bytes that could still be the start of a secret are held back until the next chunk
//! (or the end) decides.
//!
//! A seatbelt, not a boundary: a job that means to leak a credential can encode it. What it
//! stops is the common accident, a tool printing its configuration or a `set -x` trace.

/// Values shorter than this are not masked: masking `1` or `true` would shred the log and
/// hide nothing (no credential a service issues is this short).
pub const MIN_MASKED_LEN: usize = 8;

/// What a masked value becomes.
pub const MASK: &[u8] = b"***";

/// A streaming replacer of secret values with [`MASK`].
#[derive(Default)]
pub struct Masker {
    /// Longest first, so that a secret containing another is masked whole.
    secrets: Vec<Vec<u8>>,
    /// Held back: could be the start of a secret.
    pending: Vec<u8>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masker({} values)", self.secrets.len())
    }
}

impl Drop for Masker {
    fn drop(&mut self) {
        for s in &mut self.secrets {
            zeroize::Zeroize::zeroize(s);
        }
        zeroize::Zeroize::zeroize(&mut self.pending);
    }
}

impl Masker {
    /// A masker of `values` (those shorter than [`MIN_MASKED_LEN`] are left out).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Masker {
        let mut secrets: Vec<Vec<u8>> = values
            .into_iter()
            .filter(|v| v.len() >= MIN_MASKED_LEN)
            .map(|v| v.as_bytes().to_vec())
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Masker {
            secrets,
            pending: Vec::new(),
        }
    }

    /// Whether there is anything to mask.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Takes the next chunk; returns what can be written now.
    pub fn feed(&mut self, data: &[u8]) -> Vec<u8> {
        if self.secrets.is_empty() {
            return data.to_vec();
        }
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(data);
        let (out, held) = self.scan(&buf, false);
        self.pending = buf[held..].to_vec();
        zeroize::Zeroize::zeroize(&mut buf);
        out
    }

    /// The stream ended: what was held back, masked.
    pub fn finish(&mut self) -> Vec<u8> {
        let buf = std::mem::take(&mut self.pending);
        self.scan(&buf, true).0
    }

    /// Masks `buf`; returns the output and where the held-back tail starts.
    fn scan(&self, buf: &[u8], end: bool) -> (Vec<u8>, usize) {
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        'outer: while i < buf.len() {
            let rest = &buf[i..];
            for s in &self.secrets {
                if rest.starts_with(s) {
                    out.extend_from_slice(MASK);
                    i += s.len();
                    continue 'outer;
                }
            }
            // The rest could still become a secret with the next chunk: hold it.
            if !end
                && self
                    .secrets
                    .iter()
                    .any(|s| s.len() > rest.len() && s.starts_with(rest))
            {
                return (out, i);
            }
            out.push(buf[i]);
            i += 1;
        }
        (out, buf.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(secrets: &[&str], chunks: &[&[u8]]) -> String {
        let mut m = Masker::new(secrets.iter().copied());
        let mut out = Vec::new();
        for c in chunks {
            out.extend(m.feed(c));
        }
        out.extend(m.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_secret_is_masked_whole_or_split_across_any_chunks() {
        let secret = "AKIAEXAMPLESECRET";
        let line = format!("key={secret} again {secret}\n");
        let want = "key=*** again ***\n";
        assert_eq!(run(&[secret], &[line.as_bytes()]), want);
        // Every split point, and one byte at a time.
        for cut in 0..line.len() {
            let (a, b) = line.as_bytes().split_at(cut);
            assert_eq!(run(&[secret], &[a, b]), want, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = line.as_bytes().chunks(1).collect();
        assert_eq!(run(&[secret], &bytes), want);
    }

    #[test]
    fn a_near_miss_is_written_as_it_was_and_nothing_is_lost_at_the_end() {
        assert_eq!(run(&["SECRETVALUE"], &[b"SECRETVALU", b"x"]), "SECRETVALUx");
        assert_eq!(
            run(&["SECRETVALUE"], &[b"tail SECRETVAL"]),
            "tail SECRETVAL"
        );
    }

    #[test]
    fn overlapping_secrets_are_masked_longest_first_and_short_values_are_not() {
        assert_eq!(
            run(
                &["token-abc", "token-abcdef"],
                &[b"x token-abcdef y token-abc"]
            ),
            "x *** y ***"
        );
        assert_eq!(run(&["short"], &[b"short"]), "short");
    }

    #[test]
    fn with_nothing_to_mask_bytes_pass_through_untouched() {
        let mut m = Masker::new([]);
        assert!(m.is_empty());
        assert_eq!(m.feed(b"\x00\xffabc"), b"\x00\xffabc");
        assert!(m.finish().is_empty());
    }
}
