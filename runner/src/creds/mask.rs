//! Masking secret values in a stream (the job's log), also when a value arrives split across
//! reads: bytes that could still be the start of a secret are held back until the next chunk
//! (or the end) decides.
//!
//! A seatbelt, not a boundary: a job that means to leak a credential can encode it. What it
//! stops is the common accident, a tool printing its configuration or a `set -x` trace, and
//! the encodings tools print a credential in by themselves ([`encoded_forms`]): percent-encoded
//! (a presigned URL, `curl -v` of a query), JSON-escaped (as serde, PHP, Go and .NET write
//! strings), and base64 at each of the
//! three alignments it can take inside a longer value (`Authorization: Basic` of
//! `user:token`, a `docker login` config), standard and URL-safe.

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
    /// The secrets by their first bytes ([`PrefixIndex`]).
    index: PrefixIndex,
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

/// The forms of `value` that are masked in a log and looked for in a saved cache alike: none
/// for a value shorter than [`MIN_MASKED_LEN`], else those of [`encoded_forms`] at least that
/// long. What [`Masker`] and [`Finder`] both take, so that they cannot drift apart.
fn maskable_forms(value: &str) -> Vec<Vec<u8>> {
    if value.len() < MIN_MASKED_LEN {
        return Vec::new();
    }
    let mut forms = encoded_forms(value.as_bytes());
    forms.retain_mut(|f| {
        let keep = f.len() >= MIN_MASKED_LEN;
        if !keep {
            zeroize::Zeroize::zeroize(f);
        }
        keep
    });
    forms
}

/// How many bytes of a pattern's start [`PrefixIndex`] keys on; every pattern is at least
/// [`MIN_MASKED_LEN`] long, so every pattern has them.
const KEY_LEN: usize = 4;
const _: () = assert!(MIN_MASKED_LEN >= KEY_LEN);

/// Buckets of [`PrefixIndex`] (a power of two).
const BUCKETS: usize = 1 << 16;

/// The patterns by a hash of their first [`KEY_LEN`] bytes: a position of the scanned bytes
/// is compared only with the patterns in its bucket. With a few thousand patterns (a day-long
/// job's refreshed credentials, each with its encoded forms, most starting with base64
/// characters that most log bytes are) that is almost always none, and rarely more than
/// one: the cost of a scan no longer grows with the number of values. (Keyed on the first
/// byte alone, as before, a position was compared with a fiftieth of all the patterns.)
/// Offsets into one array rather than a map of vectors: two allocations, not 65,536.
///
/// Why not the `aho-corasick` crate: its automaton holds the patterns (the credentials), as
/// its states' transitions and as its prefilters' copies, in memory that nothing zeroes when
/// it is dropped, where [`Masker`] and [`Finder`]
/// zero theirs. This index holds pattern numbers only; the patterns stay in their owner's
/// zeroed storage.
///
/// Two filters come first, both small enough to stay in the CPU's first-level cache while a
/// log streams through: whether any pattern starts with the position's two bytes (a bit per
/// pair, 8 KiB: with a few credentials, almost no position passes), then whether the
/// position's bucket holds any pattern (a bit per bucket, 8 KiB). Only a position that
/// passes both reads the 256 KiB of offsets.
#[derive(Default)]
struct PrefixIndex {
    /// For each byte, whether some pattern starts with it (256 bits).
    first: [u64; 4],
    /// For each pair of bytes, whether some pattern starts with it (65,536 bits).
    pairs: Vec<u64>,
    /// For each bucket, whether it holds a pattern (`BUCKETS` bits).
    occupied: Vec<u64>,
    /// Where each bucket's pattern indexes start in `ids` (`BUCKETS + 1` entries), or empty
    /// when there are no patterns.
    starts: Vec<u32>,
    ids: Vec<u32>,
    /// The longest pattern's length.
    longest: usize,
}

impl PrefixIndex {
    fn new<'a>(patterns: impl Iterator<Item = &'a [u8]> + Clone) -> PrefixIndex {
        let mut counts = vec![0u32; BUCKETS + 1];
        let mut first = [0u64; 4];
        let mut pairs = vec![0u64; 1 << 10];
        let mut occupied = vec![0u64; BUCKETS / 64];
        let mut longest = 0;
        for p in patterns.clone() {
            let b = bucket(p);
            counts[b] += 1;
            occupied[b / 64] |= 1 << (b % 64);
            first[usize::from(p[0] / 64)] |= 1 << (p[0] % 64);
            let pair = pair(p);
            pairs[pair / 64] |= 1 << (pair % 64);
            longest = longest.max(p.len());
        }
        if longest == 0 {
            return PrefixIndex::default();
        }
        // Counts to starts (a prefix sum), then each index placed at its bucket's next slot.
        let mut starts = vec![0u32; BUCKETS + 1];
        for b in 0..BUCKETS {
            starts[b + 1] = starts[b] + counts[b];
        }
        let mut next = starts.clone();
        let mut ids = vec![0u32; starts[BUCKETS] as usize];
        for (i, p) in patterns.enumerate() {
            let b = bucket(p);
            ids[next[b] as usize] = i as u32;
            next[b] += 1;
        }
        PrefixIndex {
            first,
            pairs,
            occupied,
            starts,
            ids,
            longest,
        }
    }

    /// Whether some pattern starts with `byte`.
    #[inline]
    fn may_start(&self, byte: u8) -> bool {
        self.first[usize::from(byte / 64)] & (1 << (byte % 64)) != 0
    }

    /// Whether some pattern starts with the two bytes `at` starts with (it holds at least
    /// two).
    #[inline]
    fn may_start_pair(&self, at: &[u8]) -> bool {
        let pair = pair(at);
        self.pairs[pair / 64] & (1 << (pair % 64)) != 0
    }

    /// The indexes of the patterns that may start at `at` (which holds at least
    /// [`KEY_LEN`] bytes).
    #[inline]
    fn candidates(&self, at: &[u8]) -> &[u32] {
        if !self.may_start(at[0]) || !self.may_start_pair(at) {
            return &[];
        }
        let b = bucket(at);
        if self.occupied[b / 64] & (1 << (b % 64)) == 0 {
            return &[];
        }
        &self.ids[self.starts[b] as usize..self.starts[b + 1] as usize]
    }
}

/// The first two bytes of `at`, as one number.
#[inline]
fn pair(at: &[u8]) -> usize {
    usize::from(at[0]) << 8 | usize::from(at[1])
}

/// The bucket of the [`KEY_LEN`] bytes `at` starts with (a multiplicative hash).
fn bucket(at: &[u8]) -> usize {
    let mut key = [0u8; KEY_LEN];
    key.copy_from_slice(&at[..KEY_LEN]);
    (u32::from_le_bytes(key).wrapping_mul(0x9E37_79B1) >> 16) as usize & (BUCKETS - 1)
}

/// Calls `found` with each position of `bytes` at which one of `patterns` (indexed by
/// `index`) occurs, and the pattern's index, in order of position, until it breaks.
fn each_occurrence(
    bytes: &[u8],
    patterns: &[impl AsRef<[u8]>],
    index: &PrefixIndex,
    mut found: impl FnMut(usize, usize) -> std::ops::ControlFlow<()>,
) {
    // A pattern is longer than the key: one starting in the last KEY_LEN - 1 bytes is cut
    // off (the callers handle those).
    for p in 0..bytes.len().saturating_sub(KEY_LEN - 1) {
        // Most positions stop here, on one bit in the first-level cache.
        if !index.may_start(bytes[p]) {
            continue;
        }
        for &i in index.candidates(&bytes[p..p + KEY_LEN]) {
            let i = i as usize;
            if bytes[p..].starts_with(patterns[i].as_ref()) && found(p, i).is_break() {
                return;
            }
        }
    }
}

/// Whether `rest` (the end of what was scanned) is the start of a pattern longer than it:
/// an occurrence a later chunk may complete.
fn cut_short(rest: &[u8], patterns: &[impl AsRef<[u8]>], index: &PrefixIndex) -> bool {
    let longer = |p: &[u8]| p.len() > rest.len() && p.starts_with(rest);
    if rest.len() >= KEY_LEN {
        index
            .candidates(rest)
            .iter()
            .any(|&i| longer(patterns[i as usize].as_ref()))
    } else if rest.first().is_some_and(|&b| !index.may_start(b))
        || (rest.len() >= 2 && !index.may_start_pair(rest))
    {
        // Most of the KEY_LEN - 1 positions per chunk that come here stop at the filters,
        // as in `each_occurrence`, rather than compare every pattern.
        false
    } else {
        patterns.iter().any(|p| longer(p.as_ref()))
    }
}

/// Removes repeated values from sorted `secrets`, zeroing each copy it removes.
fn dedup_zeroing(secrets: &mut Vec<Vec<u8>>) {
    secrets.dedup_by(|later, earlier| {
        let same = later == earlier;
        if same {
            zeroize::Zeroize::zeroize(later);
        }
        same
    });
}

impl Masker {
    /// A masker of `values` (those shorter than [`MIN_MASKED_LEN`] are left out).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Masker {
        let mut m = Masker::default();
        m.add(values);
        m
    }

    /// Masks `values` too from now on (newer credentials of a running job): they join the
    /// others before the job can have read them.
    pub fn add<'a>(&mut self, values: impl IntoIterator<Item = &'a str>) {
        let mut secrets = std::mem::take(&mut self.secrets);
        secrets.extend(values.into_iter().flat_map(maskable_forms));
        secrets.sort();
        dedup_zeroing(&mut secrets);
        self.index = PrefixIndex::new(secrets.iter().map(Vec::as_slice));
        self.secrets = secrets;
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
        each_occurrence(buf, &self.secrets, &self.index, |p, i| {
            for c in &mut covered[p..p + self.secrets[i].len()] {
                *c = true;
            }
            std::ops::ControlFlow::Continue(())
        });
        // The first position from which the rest could still become a secret: an occurrence
        // that starts earlier is complete (it would have been found above).
        let held = if end {
            buf.len()
        } else {
            // Only the last `longest - 1` bytes can be the start of a secret cut short.
            (buf.len()
                .saturating_sub(self.index.longest.saturating_sub(1))..buf.len())
                .find(|&p| cut_short(&buf[p..], &self.secrets, &self.index))
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
        // Whether the output ends in a mask: a covered byte that comes next, held back now,
        // continues it (two secrets back to back are one stretch, however the stream was cut).
        self.mask_open = in_mask;
        out
    }
}

/// Finds any form ([`encoded_forms`]) of any credential value in bytes read in chunks, and
/// says whose it is: what keeps a credential out of a saved build cache (`crate::cache`),
/// where a job's tool may have written it (a `~/.vault-token`, a registry login) for every
/// later job, pull requests' included, to read.
///
/// Matches exactly what [`Masker`] masks (the same forms, the same [`MIN_MASKED_LEN`]), also
/// when an occurrence is split across chunks ([`Scan`]). Holds the values (and their forms)
/// zeroed when dropped, like [`Masker`]; never shows them in `Debug`.
#[derive(Default)]
pub struct Finder {
    /// Each form of each credential, once.
    forms: Vec<Vec<u8>>,
    /// For each form, the index in `names` of the credential it belongs to.
    owners: Vec<usize>,
    /// The credentials' names, as configured.
    names: Vec<String>,
    /// The forms by their first bytes (as in [`Masker`]).
    index: PrefixIndex,
}

impl std::fmt::Debug for Finder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Finder({} forms of {} credentials)",
            self.forms.len(),
            self.names.len()
        )
    }
}

impl Drop for Finder {
    fn drop(&mut self) {
        for form in &mut self.forms {
            zeroize::Zeroize::zeroize(form);
        }
    }
}

impl Finder {
    /// A finder of `values`, each `(credential name, value)`; values shorter than
    /// [`MIN_MASKED_LEN`] are left out, as the log's masking leaves them.
    pub fn new<'a>(values: impl IntoIterator<Item = (&'a str, &'a str)>) -> Finder {
        let mut f = Finder::default();
        for (name, value) in values {
            let forms = maskable_forms(value);
            if forms.is_empty() {
                continue;
            }
            let index = match f.names.iter().position(|n| n == name) {
                Some(i) => i,
                None => {
                    f.names.push(name.to_owned());
                    f.names.len() - 1
                }
            };
            for mut form in forms {
                if f.forms.contains(&form) {
                    zeroize::Zeroize::zeroize(&mut form);
                } else {
                    f.forms.push(form);
                    f.owners.push(index);
                }
            }
        }
        f.index = PrefixIndex::new(f.forms.iter().map(Vec::as_slice));
        f
    }

    /// Whether there is nothing to find.
    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }

    /// The name of the credential a form of which `bytes` holds, if any (the first found).
    pub fn find_in(&self, bytes: &[u8]) -> Option<&str> {
        self.find_at(bytes).map(|(_, name)| name)
    }

    /// Where in `bytes` the first form of a credential starts, and whose it is.
    pub fn find_at(&self, bytes: &[u8]) -> Option<(usize, &str)> {
        if self.forms.is_empty() {
            return None;
        }
        let mut first = None;
        each_occurrence(bytes, &self.forms, &self.index, |p, i| {
            first = Some((p, self.names[self.owners[i]].as_str()));
            std::ops::ControlFlow::Break(())
        });
        first
    }

    /// A search through one stream (a file's contents), fed chunk by chunk.
    pub fn scan(&self) -> Scan<'_> {
        Scan {
            finder: self,
            tail: Vec::new(),
        }
    }
}

/// One stream searched by a [`Finder`]: keeps the last bytes of what it was fed (fewer than
/// the longest form), so that a value split across chunks is found in the chunk that
/// completes it. Zeroes them when dropped.
pub struct Scan<'a> {
    finder: &'a Finder,
    tail: Vec<u8>,
}

impl std::fmt::Debug for Scan<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scan({:?})", self.finder)
    }
}

impl Drop for Scan<'_> {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.tail);
    }
}

impl<'a> Scan<'a> {
    /// Takes the next chunk; the name of the credential found once any form of one is
    /// complete, counting what earlier chunks ended with.
    pub fn feed(&mut self, chunk: &[u8]) -> Option<&'a str> {
        let keep = self.finder.index.longest.saturating_sub(1);
        if keep == 0 {
            return None;
        }
        // An occurrence that starts in the tail ends within the first `keep` bytes of this
        // chunk: searched in the two joined (a few hundred bytes at most), the rest of the
        // chunk where it lies.
        let mut joined = std::mem::take(&mut self.tail);
        joined.extend_from_slice(&chunk[..chunk.len().min(keep)]);
        let found = self
            .finder
            .find_in(&joined)
            .or_else(|| self.finder.find_in(chunk));
        let from = if chunk.len() >= keep {
            let mut tail = chunk[chunk.len() - keep..].to_vec();
            std::mem::swap(&mut self.tail, &mut tail);
            zeroize::Zeroize::zeroize(&mut tail);
            None
        } else {
            Some(joined.len().saturating_sub(keep))
        };
        if let Some(from) = from {
            self.tail = joined[from..].to_vec();
        }
        zeroize::Zeroize::zeroize(&mut joined);
        found
    }
}

/// `value` and the forms tools print it in by themselves: percent-encoded (upper and lower case
/// hex, RFC 3986's unreserved characters left as they are; and with `/` left too, as Python's
/// `quote` does), JSON-escaped (as serde, JavaScript and Python, PHP and Go write strings),
/// and the part of its
/// base64 that is the same wherever it starts in a longer encoded value (for each of the three
/// alignments, the characters whose six bits all come from `value`), standard and URL-safe.
/// Each distinct form once; the caller drops those under [`MIN_MASKED_LEN`].
fn encoded_forms(value: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let mut forms = vec![value.to_vec()];
    let mut add = |form: Vec<u8>| {
        if !forms.contains(&form) {
            forms.push(form);
        } else {
            let mut form = form;
            zeroize::Zeroize::zeroize(&mut form);
        }
    };
    // Upper and lower case hex; and as Python's `urllib.parse.quote` writes it by default,
    // leaving `/` as it is.
    for (upper, keep) in [(true, &b"-._~"[..]), (false, b"-._~"), (true, b"-._~/")] {
        let mut pct = Vec::with_capacity(value.len() * 3);
        for &b in value {
            if b.is_ascii_alphanumeric() || keep.contains(&b) {
                pct.push(b);
            } else {
                let hex = if upper {
                    b"0123456789ABCDEF"
                } else {
                    b"0123456789abcdef"
                };
                pct.extend([b'%', hex[usize::from(b >> 4)], hex[usize::from(b & 15)]]);
            }
        }
        add(pct);
    }
    // JSON strings as writers print them: `"` and `\` escaped (serde, JavaScript, Python); and
    // `/` too (PHP); or `<`, `>` and `&` as `\u003c`, `\u003e`, `\u0026` (Go's default); or,
    // as .NET's System.Text.Json does by default, `"`, `+`, `<`, `>`, `&`, `'` and `` ` `` as
    // upper-case `\u` escapes (`+` is in most AWS secret keys).
    for (slash, html, dotnet) in [
        (false, false, false),
        (true, false, false),
        (false, true, false),
        (false, false, true),
    ] {
        let mut json = Vec::with_capacity(value.len() * 6);
        for &b in value {
            match b {
                b'"' | b'+' | b'<' | b'>' | b'&' | b'\'' | b'`' if dotnet => {
                    json.extend(format!("\\u{:04X}", u32::from(b)).bytes());
                }
                b'"' | b'\\' => json.extend([b'\\', b]),
                b'/' if slash => json.extend(b"\\/"),
                b'<' | b'>' | b'&' if html => {
                    json.extend(format!("\\u{:04x}", u32::from(b)).bytes());
                }
                _ => json.push(b),
            }
        }
        add(json);
    }
    for offset in 0..3usize {
        let mut padded = zeroize::Zeroizing::new(vec![0u8; offset]);
        padded.extend_from_slice(value);
        let encoded = zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(padded.as_slice()),
        );
        // Characters whose bits lie wholly within `value`: none of the padding before it, none
        // of whatever follows it.
        let start = (8 * offset).div_ceil(6);
        let end = 8 * padded.len() / 6;
        if let Some(part) = encoded.as_bytes().get(start..end) {
            let url_safe: Vec<u8> = part
                .iter()
                .map(|&c| match c {
                    b'+' => b'-',
                    b'/' => b'_',
                    c => c,
                })
                .collect();
            add(part.to_vec());
            add(url_safe);
        }
    }
    forms
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

    /// The forms tools print a credential in by themselves are masked too: a presigned URL's
    /// query, a JSON config, an `Authorization: Basic` header of `user:token` (the token lands
    /// at any of three base64 alignments), URL-safe base64.
    #[test]
    fn percent_json_and_base64_forms_of_a_secret_are_masked() {
        use base64::Engine as _;
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let url_b64 = |s: &str| base64::engine::general_purpose::URL_SAFE.encode(s);
        for printed in [
            "X-Amz-Security-Token=wJalrXUtnFEMI%2FK7MDENG%2BbPxRfiCYEXAMPLEKEY&X-Amz-Date"
                .to_owned(),
            "x=wJalrXUtnFEMI%2fK7MDENG%2bbPxRfiCYEXAMPLEKEY".to_owned(),
            "x=wJalrXUtnFEMI/K7MDENG%2BbPxRfiCYEXAMPLEKEY".to_owned(),
            r#"{"secret":"wJalrXUtnFEMI\/K7MDENG+bPxRfiCYEXAMPLEKEY"}"#.to_owned(),
            format!(
                "Authorization: Basic {}",
                b64(&format!("oauth2accesstoken:{secret}"))
            ),
            format!("Authorization: Basic {}", b64(&format!("a:{secret}"))),
            format!("Authorization: Basic {}", b64(&format!("ab:{secret}"))),
            format!("auth={}", url_b64(&format!("user:{secret}"))),
            format!("auth={}", b64(secret)),
        ] {
            let masked = run(&[secret], &[printed.as_bytes()]);
            assert!(masked.contains("***"), "{printed} -> {masked}");
            // All of the encoded secret is gone but for a character or two at each edge (those
            // that mix in the bytes around it): the secret is 40 bytes, at least 40 characters
            // encoded, and `***` takes the place of all but those few.
            assert!(printed.len() - masked.len() >= 35, "{printed} -> {masked}");
        }
        // JSON as Go writes it (`&`, `<`, `>` as \u escapes, `/` as it is), as JavaScript and
        // Python do (`/` as it is) and as PHP does (`\/`).
        let odd = r#"p"w/d&x<y>z-0123456789+'"#;
        for printed in [
            r#"{"password":"p\"w/d\u0026x\u003cy\u003ez-0123456789+'"}"#,
            r#"{"password":"p\"w/d&x<y>z-0123456789+'"}"#,
            r#"{"password":"p\"w\/d&x<y>z-0123456789+'"}"#,
            // .NET's System.Text.Json.
            r#"{"password":"p\u0022w/d\u0026x\u003Cy\u003Ez-0123456789\u002B\u0027"}"#,
        ] {
            let masked = run(&[odd], &[printed.as_bytes()]);
            assert_eq!(masked, r#"{"password":"***"}"#, "{printed}");
        }
        // What merely shares a few characters is left alone.
        assert_eq!(
            run(&[secret], &[b"wJalrX and EXAMPLE"]),
            "wJalrX and EXAMPLE"
        );
    }

    /// What keeps a credential out of a saved cache finds what the log's masking masks: the
    /// value and its encoded forms, split across chunks anywhere, and names whose it is.
    #[test]
    fn a_finder_names_the_credential_of_any_form_split_across_any_chunks() {
        use base64::Engine as _;
        let token = r#"hvs.CAESI/tok"en+0123456789"#;
        let finder = Finder::new([("aws-release", "AKIAIOSFODNN7EXAMPLE"), ("vault", token)]);
        assert!(!format!("{finder:?}").contains("hvs"), "{finder:?}");
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("x:{token}"));
        for text in [
            format!("{{\"token\":\"{token}\"}}\n"),
            format!(
                "{{\"token\":\"{}\"}}",
                token.replace('"', "\\\"").replace('/', "\\/")
            ),
            format!("auth = {b64}\n"),
            format!(
                "url=https://h/?t={}",
                token
                    .replace('/', "%2F")
                    .replace('"', "%22")
                    .replace('+', "%2B")
            ),
        ] {
            let bytes = text.as_bytes();
            assert_eq!(finder.find_in(bytes), Some("vault"), "{text}");
            for cut in 0..bytes.len() {
                let mut scan = finder.scan();
                let (a, b) = bytes.split_at(cut);
                let found = scan.feed(a).or_else(|| scan.feed(b));
                assert_eq!(found, Some("vault"), "{text} cut at {cut}");
            }
            let mut scan = finder.scan();
            let found = bytes.chunks(1).find_map(|c| scan.feed(c));
            assert_eq!(found, Some("vault"), "{text} byte by byte");
        }
        assert_eq!(
            finder.find_in(b"[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\n"),
            Some("aws-release")
        );
        // A near miss, across chunks too, is nothing.
        let near = format!("{} and {}", &token[..token.len() - 1], &token[1..]);
        assert_eq!(finder.find_in(near.as_bytes()), None);
        let mut scan = finder.scan();
        assert!(near.as_bytes().chunks(3).all(|c| scan.feed(c).is_none()));
        // Nothing to find: nothing found, at any cost.
        let none = Finder::new([("short", "1234567")]);
        assert!(none.is_empty());
        assert_eq!(none.scan().feed(b"1234567"), None);
    }

    /// Masking and finding with many values (a day-long job's refreshed credentials, each
    /// with its forms) agree with a plain search of every form at every position, whatever
    /// the chunking: the index that skips most positions skips no occurrence. Values share
    /// prefixes (the same first four bytes, so the same bucket), overlap and nearly occur.
    #[test]
    fn many_values_are_masked_and_found_as_a_plain_search_finds_them() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let values: Vec<String> = (0..300)
            .map(|i| {
                let len = 8 + (next() % 90) as usize;
                let body: String = (0..len)
                    .map(|_| char::from(alphabet[(next() % 64) as usize]))
                    .collect();
                // A third share their first bytes with another value.
                if i % 3 == 0 {
                    format!("AKIA{body}")
                } else {
                    body
                }
            })
            .collect();
        let mut text = Vec::new();
        for i in 0..2000 {
            let v = values[(next() % 300) as usize].as_bytes();
            match i % 5 {
                0 => text.extend_from_slice(v),
                1 => text.extend_from_slice(&v[..v.len() - 1]), // a near miss
                2 => {
                    let w = values[(next() % 300) as usize].as_bytes();
                    text.extend_from_slice(v); // two values back to back
                    text.extend_from_slice(w);
                }
                _ => text.extend((0..(next() % 40)).map(|_| alphabet[(next() % 64) as usize])),
            }
            text.push(b' ');
        }
        // The reference: every byte of every occurrence of every form covered.
        let forms: Vec<Vec<u8>> = values.iter().flat_map(|v| maskable_forms(v)).collect();
        let mut covered = vec![false; text.len()];
        for f in &forms {
            for p in 0..text.len() {
                if text[p..].starts_with(f) {
                    covered[p..p + f.len()].iter_mut().for_each(|c| *c = true);
                }
            }
        }
        let mut want = Vec::new();
        for (i, &b) in text.iter().enumerate() {
            match (covered[i], i > 0 && covered[i - 1]) {
                (true, true) => {}
                (true, false) => want.extend_from_slice(MASK),
                (false, _) => want.push(b),
            }
        }
        assert!(covered.iter().any(|&c| c) && covered.iter().any(|&c| !c));
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        for chunk in [1, 3, 64, 1000, text.len()] {
            let chunks: Vec<&[u8]> = text.chunks(chunk).collect();
            assert!(run(&refs, &chunks).as_bytes() == want, "chunks of {chunk}");
        }
        // Finding: the first occurrence's position, in one piece and in chunks.
        let first = (0..text.len()).find(|&p| forms.iter().any(|f| text[p..].starts_with(f)));
        let finder = Finder::new(values.iter().map(|v| ("cred", v.as_str())));
        assert_eq!(finder.find_at(&text).map(|(p, _)| p), first);
        let clean: Vec<u8> = text
            .iter()
            .map(|&b| if b == b' ' { b' ' } else { b'.' })
            .collect();
        assert_eq!(finder.find_at(&clean), None);
        for chunk in [1, 7, 4096] {
            let mut scan = finder.scan();
            assert_eq!(text.chunks(chunk).find_map(|c| scan.feed(c)), Some("cred"));
        }
    }

    #[test]
    fn a_short_tail_is_judged_by_the_index_before_any_pattern_is_compared() {
        // The index knows the first pattern only: the others are decoys that a comparison
        // with every pattern would find, and the filters must turn away first.
        let patterns: [&[u8]; 3] = [b"secret-value", b"other-value", b"sz-decoy"];
        let index = PrefixIndex::new(patterns[..1].iter().copied());
        assert!(cut_short(b"s", &patterns, &index));
        assert!(cut_short(b"sec", &patterns, &index));
        // No pattern the index knows starts with `o`, nor with `sz`.
        assert!(!cut_short(b"o", &patterns, &index));
        assert!(!cut_short(b"oth", &patterns, &index));
        assert!(!cut_short(b"sz", &patterns, &index));
        assert!(!cut_short(b"sz-", &patterns, &index));
    }

    #[test]
    fn with_nothing_to_mask_bytes_pass_through_untouched() {
        let mut m = Masker::new([]);
        assert!(m.is_empty());
        assert_eq!(m.feed(b"\x00\xffabc"), b"\x00\xffabc");
        assert!(m.finish().is_empty());
    }

    #[test]
    fn values_added_later_are_masked_from_then_on_with_the_first_ones() {
        let mut m = Masker::new(["first-secret-value"]);
        let before = m.feed(b"second-secret-value first-secret-value ");
        m.add(["second-secret-value"]);
        let mut after = m.feed(b"second-secret-value first-secret-value");
        after.extend(m.finish());
        let before = String::from_utf8(before).unwrap();
        let after = String::from_utf8(after).unwrap();
        assert!(before.starts_with("second-secret-value"), "{before}");
        assert!(!after.contains("secret-value"), "{after}");
        assert_eq!(after.matches("***").count(), 2, "{after}");
    }
}
