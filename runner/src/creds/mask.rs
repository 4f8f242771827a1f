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
///
/// Every byte that belongs to any occurrence of any secret is covered, and each stretch of
/// covered bytes becomes one [`MASK`]: so a secret that extends another, or two secrets that
/// overlap, leave nothing of either visible, whatever the chunking. (Replacing the first match
/// at each position instead wrote the tail of `token-abcdef` when a chunk ended right after
/// `token-abc`, and the part of an overlapping secret past the first one's end.)
#[derive(Default)]
pub struct Masker {
    secrets: Vec<Vec<u8>>,
    /// Which bytes start some secret: positions starting with any other byte are skipped
    /// with one lookup (most of a log), which is what keeps masking near copying speed.
    first: Vec<bool>,
    /// The longest secret's length.
    longest: usize,
    /// Held back: could be the start of a secret.
    pending: Vec<u8>,
    /// How many leading bytes of `pending` an occurrence already seen covers.
    pending_covered: usize,
    /// The last thing written was a [`MASK`] whose stretch goes on into `pending`.
    mask_open: bool,
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
        secrets.sort();
        secrets.dedup();
        let mut first = vec![false; 256];
        for s in &secrets {
            first[usize::from(s[0])] = true;
        }
        Masker {
            longest: secrets.iter().map(Vec::len).max().unwrap_or(0),
            first,
            secrets,
            pending: Vec::new(),
            pending_covered: 0,
            mask_open: false,
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
        let out = self.scan(&buf, false);
        zeroize::Zeroize::zeroize(&mut buf);
        out
    }

    /// The stream ended: what was held back, masked.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.pending);
        let out = self.scan(&buf, true);
        zeroize::Zeroize::zeroize(&mut buf);
        out
    }

    /// Masks `buf` (the held-back bytes and the new chunk); returns what can be written and
    /// keeps the tail that could still become a secret (none at the `end`) in `pending`.
    fn scan(&mut self, buf: &[u8], end: bool) -> Vec<u8> {
        let mut covered = vec![false; buf.len()];
        for c in covered.iter_mut().take(self.pending_covered) {
            *c = true;
        }
        for p in 0..buf.len() {
            if !self.first[usize::from(buf[p])] {
                continue;
            }
            for s in &self.secrets {
                if buf[p..].starts_with(s) {
                    for c in &mut covered[p..p + s.len()] {
                        *c = true;
                    }
                }
            }
        }
        // The first position from which the rest could still become a secret: an occurrence
        // that starts earlier is complete (it would have been found above).
        let held = if end {
            buf.len()
        } else {
            // Only the last `longest - 1` bytes can be the start of a secret cut short.
            (buf.len().saturating_sub(self.longest.saturating_sub(1))..buf.len())
                .find(|&p| {
                    let rest = &buf[p..];
                    self.secrets
                        .iter()
                        .any(|s| s.len() > rest.len() && s.starts_with(rest))
                })
                .unwrap_or(buf.len())
        };
        let mut out = Vec::with_capacity(held);
        let mut in_mask = self.mask_open;
        for (&b, &c) in buf[..held].iter().zip(&covered[..held]) {
            if c {
                if !in_mask {
                    out.extend_from_slice(MASK);
                    in_mask = true;
                }
            } else {
                in_mask = false;
                out.push(b);
            }
        }
        self.pending = buf[held..].to_vec();
        self.pending_covered = covered[held..].iter().take_while(|&&c| c).count();
        self.mask_open = in_mask && self.pending_covered > 0;
        out
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
    fn a_secret_containing_another_is_masked_whole_and_short_values_are_not() {
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
    fn a_secret_that_extends_a_shorter_one_is_masked_whole_when_split_after_the_shorter() {
        let secrets = ["token-abc", "token-abcdef"];
        let line = b"x token-abcdef y";
        for cut in 0..line.len() {
            let (a, b) = line.split_at(cut);
            assert_eq!(run(&secrets, &[a, b]), "x *** y", "cut at {cut}");
        }
    }

    #[test]
    fn overlapping_secrets_leave_no_part_of_either_visible() {
        let secrets = ["abcdefgh", "efghijkl"];
        let line = b"<abcdefghijkl>";
        assert_eq!(run(&secrets, &[line]), "<***>");
        for cut in 0..line.len() {
            let (a, b) = line.split_at(cut);
            assert_eq!(run(&secrets, &[a, b]), "<***>", "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = line.chunks(1).collect();
        assert_eq!(run(&secrets, &bytes), "<***>");
        // A covered stretch held back and then not continued keeps its mask.
        assert_eq!(run(&secrets, &[b"abcdefghij", b"zz"]), "***ijzz");
    }

    #[test]
    fn with_nothing_to_mask_bytes_pass_through_untouched() {
        let mut m = Masker::new([]);
        assert!(m.is_empty());
        assert_eq!(m.feed(b"\x00\xffabc"), b"\x00\xffabc");
        assert!(m.finish().is_empty());
    }
}
