//! Output paths as a filesystem that ignores case compares them.
//!
//! An output lands in the output directory under its own path, next to the runner's files
//! (`job.log`, `result.json`, ...), and travels on: to the coordinator and to whoever
//! downloads it. Where names are compared without case (an ext4 or f2fs directory with the
//! casefold attribute, vfat, NTFS, macOS by default) `JOB.LOG` is `job.log`, and two outputs
//! `dist/App` and `dist/app` are one file, the second replacing the first under the first's
//! digest. So the runner's names are refused in any case, and two outputs that differ only in
//! case are refused, on every host alike: whether the output directory folds case cannot be
//! known for where the outputs go next, and is per directory on ext4.
//!
//! [`case_folded`] is the key two paths are compared by. It folds at least what any of those
//! filesystems folds to ASCII, so that no spelling of a runner's (ASCII) name gets past it:
//! ASCII letters; U+017F LONG S to `s` and U+212A KELVIN SIGN to `k` (Unicode simple case
//! folding, which ext4 and f2fs apply); U+0131 DOTLESS I to `i` (whose simple uppercase, the
//! NTFS upcase table's, is `I`); U+00DF and U+1E9E SHARP S to `ss` and the ligatures
//! U+FB00..U+FB06 to `ff`, `fi`, `fl`, `ffi`, `ffl`, `st`, `st` (full case folding, which
//! ext4 applies); and trailing dots of a component, which vfat drops (`job.log.` is
//! `job.log` there). Those are all the characters whose case folding, or uppercase, is ASCII
//! (checked against Python's `unicodedata` for Unicode 14). Other characters are lowercased
//! by their full Unicode mapping (`char::to_lowercase`), which is close to case folding;
//! canonical equivalence is not applied (`é` as one character and as `e` with a combining
//! accent are two keys, though ext4's casefold and macOS treat them as one name): only names
//! that are not ASCII can meet that, never a runner's.

/// `path` with each component case-folded as described in the module documentation: two
/// paths with the same key name one file where case is ignored.
pub fn case_folded(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, component) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        // vfat drops trailing dots; "." and ".." are never output components.
        let component = match component.trim_end_matches('.') {
            "" => component,
            trimmed => trimmed,
        };
        for c in component.chars() {
            match c {
                'ſ' => out.push('s'),
                'ı' => out.push('i'),
                'ß' | 'ẞ' => out.push_str("ss"),
                '\u{FB00}' => out.push_str("ff"),
                '\u{FB01}' => out.push_str("fi"),
                '\u{FB02}' => out.push_str("fl"),
                '\u{FB03}' => out.push_str("ffi"),
                '\u{FB04}' => out.push_str("ffl"),
                '\u{FB05}' | '\u{FB06}' => out.push_str("st"),
                c if c.is_ascii() => out.push(c.to_ascii_lowercase()),
                c => out.extend(c.to_lowercase()),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_case_and_the_letters_that_fold_to_ascii_are_folded() {
        assert_eq!(case_folded("Dist/App.TAR.gz"), "dist/app.tar.gz");
        // Long s, Kelvin sign, dotless i, sharp s, the st ligature.
        assert_eq!(case_folded("reſult.json"), "result.json");
        assert_eq!(case_folded("\u{212A}ey"), "key");
        assert_eq!(
            case_folded("provenance.sıgstore.json"),
            "provenance.sigstore.json"
        );
        assert_eq!(case_folded("Straße"), "strasse");
        assert_eq!(
            case_folded("provenance.sig\u{FB06}ore.json"),
            "provenance.sigstore.json"
        );
        assert_eq!(
            case_folded("\u{FB00}\u{FB01}\u{FB02}\u{FB03}\u{FB04}\u{FB05}"),
            "fffiflffifflst"
        );
    }

    #[test]
    fn trailing_dots_are_dropped_as_vfat_drops_them() {
        assert_eq!(case_folded("job.log."), "job.log");
        assert_eq!(case_folded("a../b."), "a/b");
        // A component of dots only keeps them: it is no other name.
        assert_eq!(case_folded("..."), "...");
    }

    #[test]
    fn other_letters_are_lowercased_and_distinct_names_stay_distinct() {
        assert_eq!(case_folded("ÉTÉ/ΣΟΦΙΑ"), "été/σοφια");
        assert_ne!(case_folded("dist/a"), case_folded("dist/b"));
        assert_ne!(case_folded("job.log"), case_folded("job-log"));
        assert_ne!(case_folded("a/b"), case_folded("a.b"));
    }
}
