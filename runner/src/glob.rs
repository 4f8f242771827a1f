//! Matching declared output patterns against workspace paths.
//!
//! Deliberately small: `*` and `?` within one path component, `**` as a whole component for
//! any number of components. Patterns never touch the filesystem; the caller walks the
//! workspace itself without following symlinks and asks only whether a relative path matches.

/// Whether the relative path `path` (components separated by `/`) matches `pattern`.
pub fn matches(pattern: &str, path: &str) -> bool {
    let pat: Vec<&str> = pattern
        .trim_start_matches("./")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match_segments(&pat, &segs, &mut 0)
}

/// One pass over the pattern's components, keeping the set of path positions the pattern so
/// far can end at: time grows with components × path depth, whatever the `**`s (trying every
/// split for each `**` instead was exponential in their number: 34 s for one path of depth 25
/// under 12 of them, and a job chooses both). `steps` counts the positions looked at.
fn match_segments(pat: &[&str], segs: &[&str], steps: &mut usize) -> bool {
    // Without `**` (most patterns): component for component, nothing allocated.
    if !pat.contains(&"**") {
        *steps += pat.len();
        return pat.len() == segs.len()
            && pat.iter().zip(segs).all(|(p, s)| wildcard_matches(p, s));
    }
    let mut at = vec![false; segs.len() + 1];
    at[0] = true;
    for p in pat {
        let mut next = vec![false; segs.len() + 1];
        *steps += segs.len() + 1;
        if *p == "**" {
            // Any number of components: every position at or after one reached.
            let mut reached = false;
            for (j, n) in next.iter_mut().enumerate() {
                reached |= at[j];
                *n = reached;
            }
        } else {
            for (j, s) in segs.iter().enumerate() {
                if at[j] && wildcard_matches(p, s) {
                    next[j + 1] = true;
                }
            }
        }
        if !next.contains(&true) {
            return false;
        }
        at = next;
    }
    at[segs.len()]
}

/// Wildcard match of the whole `text`: `*` matches any run of characters (including `/`:
/// callers that want components split them first), `?` exactly one character, anything else
/// itself. Iterative, backtracking to the last `*`: never exponential.
pub fn wildcard_matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = text.chars().collect();
    wildcard(&p, &s)
}

fn wildcard(p: &[char], s: &[char]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
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

/// Whether a pattern could match anything below `dir` (to prune the walk).
pub fn may_descend(pattern: &str, dir: &str) -> bool {
    let pat: Vec<&str> = pattern
        .trim_start_matches("./")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let segs: Vec<&str> = dir.split('/').filter(|s| !s.is_empty()).collect();
    for (i, s) in segs.iter().enumerate() {
        match pat.get(i) {
            Some(&"**") => return true,
            Some(p) if wildcard_matches(p, s) => continue,
            _ => return false,
        }
    }
    pat.len() > segs.len()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn literal_paths_match_exactly() {
        assert!(matches("out/hello", "out/hello"));
        assert!(matches("./out/hello", "out/hello"));
        assert!(!matches("out/hello", "out/hello2"));
    }

    #[test]
    fn many_double_stars_cost_their_number_times_the_depth_not_an_exponential() {
        // 65 components against 201: at most 65 × 202 positions looked at, where trying
        // every split for each `**` takes more than 2^64 (minutes already at 12 and depth 25).
        let pat: Vec<&str> = std::iter::repeat_n("**", 64).chain(["x"]).collect();
        for last in ["x", "y"] {
            let path = format!("{}{last}", "a/".repeat(200));
            let segs: Vec<&str> = path.split('/').collect();
            let mut steps = 0;
            assert_eq!(match_segments(&pat, &segs, &mut steps), last == "x");
            assert!(steps <= pat.len() * (segs.len() + 1), "{steps} steps");
        }
        assert!(matches("**/b/**/c/**", "a/b/z/c"));
        assert!(!matches("**/b/**/c/**", "a/c/z/b"));
        assert!(matches("**/**", ""));
        assert!(matches("dist/*/lib.so", "dist/x/lib.so"));
        assert!(!matches("dist/*/lib.so", "dist/x/y/lib.so"));
    }

    #[test]
    fn descent_is_pruned() {
        assert!(may_descend("dist/*.gz", "dist"));
        assert!(!may_descend("dist/*.gz", "src"));
        assert!(!may_descend("dist/*.gz", "dist/sub"));
        assert!(may_descend("**/*.gz", "a/b/c"));
    }
}
