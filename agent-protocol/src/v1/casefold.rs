//! Output paths as a filesystem that folds names compares them.
//!
//! An output lands in the output directory under its own path, next to the runner's files
//! (`job.log`, `result.json`, ...), and travels on: to the coordinator and to whoever
//! downloads it. Where names are compared folded (an ext4 or f2fs directory with the
//! casefold attribute, vfat, NTFS, macOS by default) `JOB.LOG` is `job.log`, and two outputs
//! `dist/App` and `dist/app` are one file, the second replacing the first under the first's
//! digest. So the runner's names are refused in every spelling such a filesystem takes for
//! them, and two outputs with one key are refused, on every host alike: whether the output
//! directory folds names cannot be known for where the outputs go next, and is per
//! directory on ext4.
//!
//! [`case_folded`] is the key two paths are compared by. In each component:
//! - default-ignorable code points are dropped ([`crate::terminal::is_default_ignorable`]):
//!   Linux's casefold tables (ext4, f2fs) ignore every one of them when they compare names
//!   (a 2025 change that stopped it was reverted: the hashes of existing directories depend
//!   on it), and HFS+ ignores U+200C..U+200F, U+202A..U+202E, U+206A..U+206F and U+FEFF, so
//!   `job\u{200B}.log` and `result\u{FE0F}.json` are the runner's files there;
//! - each character is case-folded as its full uppercase mapping lowercased
//!   (`to_uppercase`, then `to_lowercase`; U+1E9E CAPITAL SHARP S to `ss`, as `ß`), which
//!   puts together every pair Unicode full case folding (ext4's and f2fs's) puts together:
//!   `ς` and `σ`, `ϐ` and `β`, U+0345 and `ι`, `ſ` and `s`, the Kelvin sign and `k`, `ß` and
//!   `ss`, `ﬆ` and `st` (checked against Python's `casefold` for Unicode 14: two characters
//!   or strings that fold alike always have one key), and what NTFS's upcase table (simple
//!   uppercase) puts together, such as `ı` and `i`. `to_lowercase` alone is not case
//!   folding: it leaves `ς` apart from `σ`;
//! - trailing dots are dropped, as vfat drops them (`job.log.` is `job.log` there);
//! - canonically equivalent spellings are one key: the component is decomposed (NFD) before
//!   it is folded and again after, as Unicode's canonical caseless match (D145) and ext4's
//!   and f2fs's casefold (`utf8_casefold`, NFD with case folding) compare names, and as
//!   APFS and HFS+ compare them. So `é` as one character and as `e` with a combining acute
//!   are one name there, and one key here; `Å` (U+00C5) and the Ångström sign (U+212B),
//!   too. Compatibility forms that case folding leaves (full-width `ａ` against `a`,
//!   superscripts) stay apart, as those filesystems keep them.
//!
//! The key folds more than any one filesystem does (trailing dots after an ignorable mark,
//! say, which no filesystem takes together): it refuses more, never less.
//!
//! vfat and NTFS also give a long name a short 8.3 alias that a lookup matches as well
//! (`result.json` is also `RESULT~1.JSO` there, `.job.log.partial` `JOBLOG~1.PAR`). No key
//! can fold that, since the number depends on what else the directory holds; so
//! [`may_be_short_name_of`] says whether a component has the shape of an alias a given long
//! name could get, and the runner's names refuse those (`reserved_output`), as git refuses
//! `GIT~1` for `.git`. Two outputs where one has the shape of the other's alias
//! (`dist/LONGNA~1.TXT` beside `dist/longname.text`) are not refused: on vfat the one copied
//! second replaces the first, which then no longer has the digest recorded for it.
//!
//! Rejected: refusing output names that hold invisible characters. The zero-width
//! non-joiner is part of ordinary Persian words, the joiner of emoji sequences and of Indic
//! scripts, the variation selectors of emoji: a build may name files with them. Folding
//! them away is what the filesystems do, and where a name is shown to a person they are
//! escaped ([`crate::terminal::escape`]), so they hide nothing there.

use icu_normalizer::DecomposingNormalizerBorrowed;

use crate::terminal::is_default_ignorable;

/// `path` with each component folded as described in the module documentation: two paths
/// with the same key name one file where a filesystem folds names.
pub fn case_folded(path: &str) -> String {
    let nfd = DecomposingNormalizerBorrowed::new_nfd();
    let mut out = String::with_capacity(path.len());
    let mut folded = String::new();
    for (i, component) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let start = out.len();
        folded.clear();
        for c in nfd.normalize(component).chars() {
            match c {
                c if c.is_ascii() => folded.push(c.to_ascii_lowercase()),
                c if is_default_ignorable(c) => {}
                // Its lowercase is `ß`, whose uppercase is `SS`.
                '\u{1E9E}' => folded.push_str("ss"),
                c => folded.extend(c.to_uppercase().flat_map(char::to_lowercase)),
            }
        }
        // A folded character need not be in canonical order or decomposed (U+0345, a mark,
        // folds to the letter `ι`; `Å` U+212B to the precomposed `å`): decompose again,
        // as D145 does.
        out.push_str(&nfd.normalize(&folded));
        // vfat drops trailing dots; a component of dots only keeps them ("." and ".." are
        // never output components).
        let kept = out[start..].trim_end_matches('.').len();
        if kept > 0 {
            out.truncate(start + kept);
        }
    }
    out
}

/// Whether the path component whose key ([`case_folded`]) is `key` could be the short 8.3
/// name vfat or NTFS gives the long name `long` (lower case ASCII, as the runner's names):
/// `<basis>~<n>` with the long name's extension, where `<basis>` is up to 6 characters the
/// long name's basis starts with and `<n>` a number (`RESULT~1.JSO`, `RESUL~10.JSO`); or
/// Linux's second form, the basis's first two characters and four hexadecimal digits
/// (`RE1A2B~3.JSO`); or, under Linux's `nonumtail` mount option, the basis cut to 8
/// characters without a number (`RESULT.JSO`). The basis is the long name before its last
/// dot without dots and spaces (`.job.log.partial`: `JOBLOG`), the extension the first 3
/// characters after the last dot (`PAR`), as Linux's `vfat_create_shortname` derives them.
pub fn may_be_short_name_of(key: &str, long: &str) -> bool {
    let (basis, extension) = short_name_parts(long);
    let (stem, ext) = key.rsplit_once('.').unwrap_or((key, ""));
    // A short name's stem is at most 8 characters, with no dot.
    if ext != extension || stem.contains('.') || stem.chars().count() > 8 {
        return false;
    }
    if stem.chars().eq(basis.chars().take(8)) {
        return true;
    }
    let Some((b, n)) = stem.rsplit_once('~') else {
        return false;
    };
    if b.is_empty() || b.len() > 6 || n.is_empty() || !n.bytes().all(|d| d.is_ascii_digit()) {
        return false;
    }
    let hashed = b.len() == 6
        && b.get(..2).is_some_and(|two| basis.starts_with(two))
        && b.bytes().skip(2).all(|x| x.is_ascii_hexdigit());
    basis.starts_with(b) || hashed
}

/// The basis and extension a short name is made of (lower case), as
/// [`may_be_short_name_of`] describes.
fn short_name_parts(long: &str) -> (String, String) {
    let skip = |c: &char| *c != '.' && *c != ' ';
    let (basis, ext) = match long.rsplit_once('.') {
        // A name that is only dots before its last has no extension ("...test").
        Some((before, after)) if !after.is_empty() && before.chars().any(|c| skip(&c)) => {
            (before, after)
        }
        _ => (long, ""),
    };
    (
        basis.chars().filter(skip).collect(),
        ext.chars().filter(skip).take(3).collect(),
    )
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
    fn default_ignorable_code_points_are_dropped_as_linux_and_hfs_plus_drop_them() {
        assert_eq!(case_folded("job\u{200B}.log"), "job.log");
        assert_eq!(case_folded("result\u{FE0F}.json"), "result.json");
        assert_eq!(case_folded(".job\u{2060}.log.partial"), ".job.log.partial");
        assert_eq!(case_folded("d\u{E0001}ist/\u{00AD}a"), "dist/a");
        // What HFS+ ignores, each of them; and U+2065, unassigned but default-ignorable.
        for c in ('\u{200C}'..='\u{200F}')
            .chain('\u{202A}'..='\u{202E}')
            .chain('\u{206A}'..='\u{206F}')
            .chain(['\u{FEFF}', '\u{2065}'])
        {
            assert_eq!(
                case_folded(&format!("EGRESS{c}.log")),
                "egress.log",
                "U+{:04X}",
                u32::from(c)
            );
        }
        // Visible characters that look like nothing much are kept.
        assert_ne!(case_folded("job\u{00A0}.log"), "job.log");
        assert_ne!(case_folded("job\u{0301}.log"), "job.log");
    }

    #[test]
    fn letters_are_case_folded_not_merely_lowercased() {
        // Pairs that Unicode case folding takes together and `to_lowercase` does not.
        for (a, b) in [
            ("ς", "σ"),
            ("ϐ", "β"),
            ("ϑ", "θ"),
            ("ϕ", "φ"),
            ("ϖ", "π"),
            ("ϰ", "κ"),
            ("ϱ", "ρ"),
            ("ϵ", "ε"),
            ("\u{0345}", "ι"),
            ("\u{1E9B}", "\u{1E61}"),
        ] {
            assert_ne!(a.to_lowercase(), b.to_lowercase(), "{a} {b}");
            assert_eq!(case_folded(a), case_folded(b), "{a} {b}");
        }
        assert_eq!(case_folded("dist/ΟΔΥΣΣΕΥΣ"), case_folded("dist/οδυσσευς"));
    }

    #[test]
    fn short_names_vfat_and_ntfs_give_a_long_name_are_recognised() {
        let short = |name: &str, long: &str| may_be_short_name_of(&case_folded(name), long);
        for name in [
            "RESULT~1.JSO",
            "result~2.jso",
            "RESUL~10.JSO",
            "R~123456.JSO",
            "RE1A2B~3.JSO",
            "RESULT.JSO",
            "RESULT~1.JSO.",
        ] {
            assert!(short(name, "result.json"), "{name}");
        }
        assert!(short("JOBLOG~1.PAR", ".job.log.partial"));
        assert!(short("PROVEN~2.JSO", "provenance.sigstore.json"));
        assert!(short("PROVEN~1.JSO", "provenance.intoto.jsonl"));
        for name in [
            "RESULT~1.JSON",
            "RESULT~10.JSO",
            "RESULT~1.JS",
            "RESULT~1",
            "RESULT~.JSO",
            "RESULT~X.JSO",
            "RESULTS~1.JSO",
            "REPORT~1.JSO",
            "RE1A2G~3.JSO",
            "RESULT~1.LOG",
            "A.RESULT~1.JSO",
            "result.json",
        ] {
            assert!(!short(name, "result.json"), "{name}");
        }
        assert!(!short("JOBLOG~1.PAR", "job.log"));
    }

    #[test]
    fn canonically_equivalent_spellings_are_one_key() {
        // Precomposed against decomposed, in either case; marks in another order.
        for (a, b) in [
            ("dist/caf\u{E9}.txt", "dist/cafe\u{301}.txt"),
            ("dist/CAF\u{C9}.txt", "dist/cafe\u{301}.txt"),
            ("\u{212B}ngstr\u{F6}m", "A\u{30A}ngstro\u{308}m"),
            ("\u{1F0}", "J\u{30C}"),
            ("a\u{301}\u{323}", "a\u{323}\u{301}"),
            ("\u{1E69}", "s\u{323}\u{307}"),
        ] {
            assert_eq!(case_folded(a), case_folded(b), "{a:?} {b:?}");
        }
        // Compatibility forms and different marks stay apart.
        assert_ne!(case_folded("\u{FF41}"), case_folded("a"));
        assert_ne!(case_folded("\u{E9}"), case_folded("\u{E8}"));
        assert_ne!(case_folded("e\u{301}"), case_folded("e"));
    }

    #[test]
    fn other_letters_are_folded_and_distinct_names_stay_distinct() {
        assert_eq!(case_folded("ÉTÉ/ΣΟΦΙΑ"), "e\u{301}te\u{301}/σοφια");
        assert_ne!(case_folded("dist/a"), case_folded("dist/b"));
        assert_ne!(case_folded("job.log"), case_folded("job-log"));
        assert_ne!(case_folded("a/b"), case_folded("a.b"));
    }
}
