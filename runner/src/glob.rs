//! Matching declared output patterns against workspace paths.
//!
//! Deliberately small: `*` and `?` within one path component, `**` as a whole component for
//! any number of components. Patterns never touch the filesystem; the caller walks the
//! workspace itself without following symlinks and asks, one directory entry at a time,
//! whether its path matches and whether anything below it could.
//!
//! The walk asks incrementally: [`Patterns`] keeps, for the directory being listed, the set
//! of pattern positions each pattern has reached along the path to it ([`Reach`]), and an
//! entry's name is matched once against the components at those positions
//! ([`Patterns::step`]). Matching a path whole for every entry instead (as this module did)
//! costs its depth again for each entry, and a pattern's text again for each entry; and
//! trying every split for each `**` was exponential (34 s for one path of depth 25 under 12
//! of them). Every component comparison is counted, so that the caller can bound what
//! matching costs in all (`outputs::MAX_MATCH_STEPS`): the job chooses both the patterns
//! and the tree, and `*aaa…ab` against `aaaa…` costs the product of their lengths.

/// The declared output patterns, split into components once.
#[derive(Debug)]
pub struct Patterns {
    /// Each pattern's components; `None` for `**`.
    patterns: Vec<Vec<Option<Vec<char>>>>,
    /// Where each pattern's positions start in a [`Reach`]'s bits.
    offsets: Vec<usize>,
    /// Each pattern's `**` components, by index.
    double_stars: Vec<Vec<usize>>,
    /// Bits in a [`Reach`].
    bits: usize,
}

/// For each pattern, the positions (number of components matched so far) it can be at after
/// the path walked so far, `**` already taken as matching nothing where it can.
#[derive(Debug, Clone)]
pub struct Reach {
    words: Vec<u64>,
    /// The words with a bit set, each once: clearing the reach for the next entry costs what
    /// the last one set, not the whole (with many long patterns, thousands of words).
    dirty: Vec<usize>,
}

/// What matching one entry's name found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Some pattern matches the entry's whole path.
    pub matched: bool,
    /// Some pattern could match a path below the entry (were it a directory).
    pub descend: bool,
}

impl Reach {
    fn get(&self, bit: usize) -> bool {
        self.words[bit / 64] & (1 << (bit % 64)) != 0
    }

    fn set(&mut self, bit: usize) {
        let word = &mut self.words[bit / 64];
        if *word == 0 {
            self.dirty.push(bit / 64);
        }
        *word |= 1 << (bit % 64);
    }

    /// Clears every bit; returns how many words that took.
    fn clear(&mut self) -> usize {
        let cleared = self.dirty.len();
        for w in self.dirty.drain(..) {
            self.words[w] = 0;
        }
        cleared
    }

    /// Each bit set in `start..end`, in order: a word at a time, so a pattern's positions
    /// cost what is set, not its length.
    fn each_in(&self, start: usize, end: usize, mut f: impl FnMut(usize)) {
        if start >= end {
            return;
        }
        for w in start / 64..=(end - 1) / 64 {
            let mut word = self.words[w];
            if w == start / 64 {
                word &= u64::MAX << (start % 64);
            }
            if w == (end - 1) / 64 {
                word &= u64::MAX >> (63 - (end - 1) % 64);
            }
            while word != 0 {
                f(w * 64 + word.trailing_zeros() as usize);
                word &= word - 1;
            }
        }
    }

    /// Whether any bit in `start..end` is set.
    fn any_in(&self, start: usize, end: usize) -> bool {
        let mut any = false;
        self.each_in(start, end, |_| any = true);
        any
    }
}

impl Patterns {
    /// Splits `patterns` (relative, `/`-separated; a leading `./` and empty components are
    /// ignored) into components.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Patterns {
        let mut list = Vec::with_capacity(patterns.len());
        let mut offsets = Vec::with_capacity(patterns.len());
        let mut double_stars = Vec::with_capacity(patterns.len());
        let mut bits = 0;
        for p in patterns {
            let components: Vec<Option<Vec<char>>> = p
                .as_ref()
                .trim_start_matches("./")
                .split('/')
                .filter(|s| !s.is_empty())
                .map(|s| (s != "**").then(|| s.chars().collect()))
                .collect();
            offsets.push(bits);
            bits += components.len() + 1;
            double_stars.push(
                components
                    .iter()
                    .enumerate()
                    .filter_map(|(j, c)| c.is_none().then_some(j))
                    .collect(),
            );
            list.push(components);
        }
        Patterns {
            patterns: list,
            offsets,
            double_stars,
            bits,
        }
    }

    /// The reach at the top of the tree (the empty path).
    pub fn start(&self) -> Reach {
        let mut reach = self.empty();
        for (i, offset) in self.offsets.iter().enumerate() {
            reach.set(*offset);
            self.close(i, &mut reach);
        }
        reach
    }

    /// A reach with no position: a buffer for [`Patterns::step`].
    pub fn empty(&self) -> Reach {
        Reach {
            words: vec![0; self.bits.div_ceil(64).max(1)],
            dirty: Vec::new(),
        }
    }

    /// Matches the entry `name` in a directory whose reach is `from`: writes the entry's
    /// reach into `into` (whatever it held before), marks in `matched_by` (one flag per
    /// pattern) each pattern that matches the entry's whole path, and adds what it did to
    /// `steps`: one for each word of `into` it cleared, one for each pattern, one for each
    /// position it has reached, one for each character comparison.
    pub fn step(
        &self,
        from: &Reach,
        name: &[char],
        into: &mut Reach,
        matched_by: &mut [bool],
        steps: &mut u64,
    ) -> Step {
        *steps += into.clear() as u64;
        let mut found = Step::default();
        for (i, components) in self.patterns.iter().enumerate() {
            *steps += 1;
            let offset = self.offsets[i];
            let end = offset + components.len();
            // The last position (the whole pattern matched) has no component to take.
            let mut live = false;
            from.each_in(offset, end, |bit| {
                *steps += 1;
                match &components[bit - offset] {
                    // `**` takes this component too and stays where it is.
                    None => {
                        into.set(bit);
                        live = true;
                    }
                    Some(p) => {
                        if wildcard(p, name, steps) {
                            into.set(bit + 1);
                            live = true;
                        }
                    }
                }
            });
            if !live {
                continue;
            }
            self.close(i, into);
            if into.get(end) {
                found.matched = true;
                if let Some(flag) = matched_by.get_mut(i) {
                    *flag = true;
                }
            }
            if into.any_in(offset, end) {
                found.descend = true;
            }
        }
        found
    }

    /// Takes each `**` the pattern `i` has reached as matching no component too (in order,
    /// so that `**/**` reaches past both).
    fn close(&self, i: usize, reach: &mut Reach) {
        let offset = self.offsets[i];
        for j in &self.double_stars[i] {
            if reach.get(offset + j) {
                reach.set(offset + j + 1);
            }
        }
    }
}

/// Wildcard match of the whole `text`: `*` matches any run of characters (including `/`:
/// callers that want components split them first), `?` exactly one character, anything else
/// itself. Iterative, backtracking to the last `*`: never exponential.
pub fn wildcard_matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = text.chars().collect();
    wildcard(&p, &s, &mut 0)
}

/// [`wildcard_matches`] on characters, adding each comparison to `steps`: at most the
/// product of the two lengths (a `*` backtracked to once for each character of `s`).
fn wildcard(p: &[char], s: &[char], steps: &mut u64) -> bool {
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        *steps += 1;
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == s[si])) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the relative path `path` (components separated by `/`) matches `pattern`:
    /// a whole path at once, for the tests (the walk steps [`Patterns`] itself).
    fn matches(pattern: &str, path: &str) -> bool {
        path_step(pattern, path, &mut 0).matched
    }

    /// Whether a pattern could match anything below `dir` (to prune the walk).
    fn may_descend(pattern: &str, dir: &str) -> bool {
        path_step(pattern, dir, &mut 0).descend
    }

    /// [`Patterns::step`] for a whole path, one component after the other.
    fn path_step(pattern: &str, path: &str, steps: &mut u64) -> Step {
        let patterns = Patterns::new(&[pattern]);
        let mut reach = patterns.start();
        let mut next = patterns.empty();
        let mut found = Step {
            matched: reach.get(patterns.offsets[0] + patterns.patterns[0].len()),
            descend: true,
        };
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            let name: Vec<char> = segment.chars().collect();
            found = patterns.step(&reach, &name, &mut next, &mut [false], steps);
            std::mem::swap(&mut reach, &mut next);
        }
        found
    }

    #[test]
    fn stars_stay_within_a_component() {
        assert!(matches("dist/*.tar.gz", "dist/app.tar.gz"));
        assert!(!matches("dist/*.tar.gz", "dist/sub/app.tar.gz"));
        assert!(matches("*.txt", "a.txt"));
        assert!(!matches("*.txt", "a.txt.bak"));
        assert!(matches("a?c", "abc"));
    }

    #[test]
    fn a_literal_star_in_the_text_does_not_consume_the_wildcard() {
        assert!(matches("*a", "*ba"));
        assert!(wildcard_matches("org/*", "org/x/y"));
        assert!(!wildcard_matches("org/?", "org/xy"));
    }

    #[test]
    fn double_star_spans_components() {
        assert!(matches("dist/**/*.so", "dist/x/y/lib.so"));
        assert!(matches("dist/**/*.so", "dist/lib.so"));
        assert!(matches("**", "any/thing"));
        assert!(!matches("dist/**/*.so", "other/lib.so"));
        assert!(matches("dist/**", "dist"));
    }

    #[test]
    fn literal_paths_match_exactly() {
        assert!(matches("out/hello", "out/hello"));
        assert!(matches("./out/hello", "out/hello"));
        assert!(!matches("out/hello", "out/hello2"));
    }

    #[test]
    fn many_double_stars_cost_their_number_times_the_depth_not_an_exponential() {
        // 65 components against 201: at most 65 positions for each of the 201 components,
        // where trying every split for each `**` takes more than 2^64 (minutes already at 12
        // and depth 25).
        let pat = format!("{}x", "**/".repeat(64));
        for last in ["x", "y"] {
            let path = format!("{}{last}", "a/".repeat(200));
            let mut steps = 0;
            assert_eq!(path_step(&pat, &path, &mut steps).matched, last == "x");
            // Each position looked at costs one, and `x` against a one-letter name one more.
            assert!(steps <= 2 * 66 * 201, "{steps} steps");
        }
        assert!(matches("**/b/**/c/**", "a/b/z/c"));
        assert!(!matches("**/b/**/c/**", "a/c/z/b"));
        assert!(matches("**/**", ""));
        assert!(matches("dist/*/lib.so", "dist/x/lib.so"));
        assert!(!matches("dist/*/lib.so", "dist/x/y/lib.so"));
    }

    #[test]
    fn a_name_is_matched_once_however_deep_its_directory() {
        // Incremental: the entry's name is compared with the components its directory has
        // reached, never the whole path again. 10 000 names at depth 100 under `**/*.so`.
        let patterns = Patterns::new(&["**/*.so"]);
        let mut reach = patterns.start();
        let mut next = patterns.empty();
        let mut steps = 0;
        let dir: Vec<char> = "d".chars().collect();
        for _ in 0..100 {
            patterns.step(&reach, &dir, &mut next, &mut [false], &mut steps);
            std::mem::swap(&mut reach, &mut next);
        }
        let before = steps;
        let name: Vec<char> = "lib.so".chars().collect();
        let mut matched = [false];
        for _ in 0..10_000 {
            let found = patterns.step(&reach, &name, &mut next, &mut matched, &mut steps);
            assert!(found.matched && found.descend);
        }
        assert!(matched[0]);
        // Per name: the pattern, its two positions, seven character comparisons and the one
        // word of reach cleared, not the depth again.
        assert_eq!(steps - before, 10_000 * 11);
    }

    #[test]
    fn a_wildcard_costs_at_most_the_product_of_the_lengths_and_is_counted() {
        // A long literal after a `*`: compared again from each position of the name.
        let p: Vec<char> = format!("*{}b", "a".repeat(150)).chars().collect();
        let s: Vec<char> = "a".repeat(200).chars().collect();
        let mut steps = 0;
        assert!(!wildcard(&p, &s, &mut steps));
        // Far more than the two lengths together, never more than their product.
        assert!(
            steps > 5_000 && steps <= (p.len() * s.len()) as u64,
            "{steps}"
        );
    }

    #[test]
    fn a_reused_reach_holds_nothing_of_the_entry_before() {
        // One buffer for every entry of a directory, as the walk uses it: each step's answer
        // is the one a fresh buffer gives.
        let patterns = Patterns::new(&["a/**/x", "*/b", "c", "**/d/e"]);
        let start = patterns.start();
        let mut reused = patterns.empty();
        let mut steps = 0;
        for name in ["a", "c", "z", "d", "a", "b", "q", "d"] {
            let name: Vec<char> = name.chars().collect();
            let mut fresh = patterns.empty();
            let want = patterns.step(&start, &name, &mut fresh, &mut [false; 4], &mut steps);
            let got = patterns.step(&start, &name, &mut reused, &mut [false; 4], &mut steps);
            assert_eq!(got, want, "{name:?}");
            assert_eq!(reused.words, fresh.words, "{name:?}");
            // And one level down, from each.
            for below in ["x", "e", "b"] {
                let below: Vec<char> = below.chars().collect();
                let mut a = patterns.empty();
                let mut b = patterns.empty();
                assert_eq!(
                    patterns.step(&fresh, &below, &mut a, &mut [false; 4], &mut steps),
                    patterns.step(&reused, &below, &mut b, &mut [false; 4], &mut steps),
                );
            }
        }
    }

    #[test]
    fn clearing_the_reach_costs_what_the_entry_before_set_not_its_size() {
        // 256 patterns of 500 components: a reach of 2 000 words. An entry only the first
        // pattern reaches sets one word, and the next entry clears that one.
        let long = format!("{}x", "a/".repeat(499));
        let mut list = vec![long.clone()];
        list.extend((0..255).map(|i| format!("p{i}/{long}")));
        let patterns = Patterns::new(&list);
        assert!(patterns.empty().words.len() > 2_000);
        let start = patterns.start();
        let mut next = patterns.empty();
        let mut flags = vec![false; list.len()];
        let mut steps = 0;
        for _ in 0..1_000 {
            patterns.step(&start, &['a'], &mut next, &mut flags, &mut steps);
        }
        // Per entry: 256 patterns, one position and one comparison each, one word cleared
        // (where clearing the whole reach would cost 2 000 more).
        assert!(steps <= 1_000 * (3 * 256 + 1), "{steps}");
    }

    #[test]
    fn descent_is_pruned() {
        assert!(may_descend("dist/*.gz", "dist"));
        assert!(!may_descend("dist/*.gz", "src"));
        assert!(!may_descend("dist/*.gz", "dist/sub"));
        assert!(may_descend("**/*.gz", "a/b/c"));
        assert!(!may_descend("dist/app", "dist/app"));
        assert!(may_descend("dist/**", "dist/app"));
    }

    #[test]
    fn each_pattern_that_matches_is_named() {
        let patterns = Patterns::new(&["a/*", "*/b", "c"]);
        let start = patterns.start();
        let mut a = patterns.empty();
        let mut steps = 0;
        let found = patterns.step(&start, &['a'], &mut a, &mut [false; 3], &mut steps);
        assert_eq!(
            found,
            Step {
                matched: false,
                descend: true
            }
        );
        let mut flags = [false; 3];
        let mut b = patterns.empty();
        assert!(
            patterns
                .step(&a, &['b'], &mut b, &mut flags, &mut steps)
                .matched
        );
        assert_eq!(flags, [true, true, false]);
    }
}
