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
    match_segments(&pat, &segs)
}

fn match_segments(pat: &[&str], segs: &[&str]) -> bool {
    match pat.split_first() {
        None => segs.is_empty(),
        Some((&"**", rest)) => (0..=segs.len()).any(|i| match_segments(rest, &segs[i..])),
        Some((p, rest)) => match segs.split_first() {
            Some((s, srest)) => wildcard_matches(p, s) && match_segments(rest, srest),
            None => false,
        },
    }
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
    fn descent_is_pruned() {
        assert!(may_descend("dist/*.gz", "dist"));
        assert!(!may_descend("dist/*.gz", "src"));
        assert!(!may_descend("dist/*.gz", "dist/sub"));
        assert!(may_descend("**/*.gz", "a/b/c"));
    }
}
