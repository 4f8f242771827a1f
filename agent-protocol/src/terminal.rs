//! Text from jobs and runners shown on an operator's terminal.
//!
//! A job's output reaches an operator's terminal from `bulwark run` (the echo of its log) and
//! from `bulwark-coordinator jobs log` (a job of the fleet's). Escape sequences in it could
//! set the terminal's title, write its clipboard (OSC 52), redefine keys or hide lines, so
//! both show it through [`visible_controls`] ([`VisibleStream`] for a stream); the stored log
//! keeps the bytes as they were. Carriage returns pass: progress bars use them, and they
//! can only redraw the line they are on.
//!
//! Names and sentences are another matter: an output's path, a step's name quoted in a
//! result's reason, a subject name `bulwark verify` prints, an artifact an inventory query
//! lists. Those are shown through [`escape`], the one function for such text in every
//! Bulwark binary: besides control characters it escapes the characters that display as
//! nothing or that reorder what follows them (bidirectional overrides, isolates and marks,
//! zero-width spaces and joiners, the other format characters), because a name the job
//! chose is read by a person deciding something about it, and `dist/app\u{202e}zg.rat.exe`
//! must not look like `dist/appexe.tar.gz`. The job's own log is not treated so: it is the
//! job's text, shown as the job's, and a job can print a forged line without any such mark.
//! JSON written for programs (`result.json`, `--json` output) keeps every name as it is.
//!
//! Rejected alternatives: escaping every character outside printable ASCII (what the
//! coordinator's CLI did) shows `café.tar.gz` as `caf\u{e9}.tar.gz` and gives the two CLIs
//! two spellings of one name, while homoglyphs (a Cyrillic `а`) are visible characters that
//! neither approach can make safe: the digest beside every name is its identity. Relying
//! on `{:?}` (which escapes most of these) also escapes quotes and backslashes, and misses
//! the invisible letters (U+3164 HANGUL FILLER) and variation selectors.

use std::borrow::Cow;

/// Whether `c` is shown escaped by [`escape`]: a control character (general category Cc:
/// C0, DEL, C1), a default-ignorable code point ([`is_default_ignorable`]: rendered as
/// nothing, most format characters among them), the other format characters (Cf: the
/// Arabic, Syriac and Egyptian number and format marks U+0600..U+0605, U+06DD, U+070F,
/// U+0890, U+0891, U+08E2, U+110BD, U+110CD, U+13430..U+1343F, and U+FFF9..U+FFFB), or a
/// line or paragraph separator (U+2028, U+2029: a line break to many log viewers). From
/// Unicode 15 (`DerivedGeneralCategory.txt`).
pub fn is_escaped(c: char) -> bool {
    c.is_control()
        || is_default_ignorable(c)
        || matches!(
            c,
            // Format characters (Cf) that are not default-ignorable.
            '\u{0600}'..='\u{0605}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08E2}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                // Line and paragraph separators (Zl, Zp).
                | '\u{2028}'..='\u{2029}'
        )
}

/// Whether `c` is a default-ignorable code point (Unicode 15 `DerivedCoreProperties.txt`,
/// `Default_Ignorable_Code_Point`): a character a renderer shows as nothing when it does not
/// support it, and that some filesystems ignore when they compare names (Linux's casefold
/// tables on ext4 and f2fs drop all of them; HFS+ drops U+200C..U+200F, U+202A..U+202E,
/// U+206A..U+206F and U+FEFF). The soft hyphen U+00AD, U+034F, U+061C, the Hangul fillers
/// U+115F, U+1160, U+3164, U+FFA0, U+17B4, U+17B5, the Mongolian variation selectors and
/// vowel separator U+180B..U+180F, the zero-width spaces, joiners and marks
/// U+200B..U+200F, the bidirectional embeddings and overrides U+202A..U+202E, the word
/// joiner, invisible operators, isolates and deprecated format characters U+2060..U+206F
/// (U+2065 unassigned, ignorable all the same), the variation selectors U+FE00..U+FE0F,
/// the byte order mark U+FEFF, U+FFF0..U+FFF8, the shorthand format controls
/// U+1BCA0..U+1BCA3, the musical format controls U+1D173..U+1D17A, and the tags and
/// supplementary variation selectors U+E0000..U+E0FFF.
pub fn is_default_ignorable(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// `text` for a terminal or a log line: each character [`is_escaped`] written as an escape,
/// a control character as Rust writes it (`\n`, `\t`, `\u{1b}`), any other as `\u{202e}`;
/// everything else as it is (backslashes too: this is for people to read, not to parse
/// back). Borrowed when nothing needs escaping. Callers bound the length where the text can
/// be long.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else if is_escaped(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `text` whole in double quotes, `"` and `\` escaped as Rust's `{:?}` escapes them, then
/// [`escape`]d: for a value someone else chose (an output's name) printed amid a line's own
/// words, so that where it ends is never in doubt: a name holding `  built … by …` cannot
/// pass for the line's own fields. Not cut: callers bound the length where it can be long.
pub fn quoted(text: &str) -> String {
    escape(&format!("{text:?}")).into_owned()
}

/// `data` with every C0 control character but tab, newline and carriage return, and DEL,
/// written in caret notation (`^[` for ESC), and every C1 control character (U+0080 to
/// U+009F, which UTF-8 terminals also obey: U+009B is CSI) written as `\u{9b}`.
pub fn visible_controls(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        match b {
            b'\t' | b'\n' | b'\r' => out.push(b),
            0..=0x1f => out.extend_from_slice(&[b'^', b + 0x40]),
            0x7f => out.extend_from_slice(b"^?"),
            0xc2 if matches!(data.get(i + 1), Some(0x80..=0x9f)) => {
                out.extend_from_slice(format!("\\u{{{:x}}}", data[i + 1]).as_bytes());
                i += 1;
            }
            _ => out.push(b),
        }
        i += 1;
    }
    out
}

/// [`visible_controls`] over a stream shown a chunk at a time: a C1 control split between two
/// chunks (its UTF-8 lead byte at the end of one) is still shown, not sent.
#[derive(Debug, Default)]
pub struct VisibleStream {
    /// The last chunk ended with `0xC2`, not shown yet.
    held: bool,
}

impl VisibleStream {
    /// The next chunk, made visible.
    pub fn show(&mut self, data: &[u8]) -> Vec<u8> {
        let mut input = Vec::with_capacity(data.len() + 1);
        if std::mem::take(&mut self.held) {
            input.push(0xc2);
        }
        input.extend_from_slice(data);
        if input.last() == Some(&0xc2) {
            input.pop();
            self.held = true;
        }
        visible_controls(&input)
    }

    /// The end of the stream: a lead byte held back is shown as it is (alone, it is not a
    /// control).
    pub fn finish(&mut self) -> Vec<u8> {
        if std::mem::take(&mut self.held) {
            vec![0xc2]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_that_hide_or_reorder_text_are_escaped_like_control_characters() {
        // An extension disguised by a right-to-left override, a name split by a zero-width
        // space, an isolate, a byte order mark, a Hangul filler, a tag, a line separator.
        assert_eq!(
            escape("app\u{202e}zg.rat.exe a\u{200b}b \u{2066}c\u{2069} \u{feff}d \u{3164}e \u{e0041}f\u{2028}g"),
            "app\\u{202e}zg.rat.exe a\\u{200b}b \\u{2066}c\\u{2069} \\u{feff}d \\u{3164}e \\u{e0041}f\\u{2028}g"
        );
        for c in [
            '\u{061C}',
            '\u{200E}',
            '\u{200F}',
            '\u{202A}',
            '\u{202B}',
            '\u{202C}',
            '\u{202D}',
            '\u{2067}',
            '\u{2068}',
            '\u{200C}',
            '\u{200D}',
            '\u{2060}',
            '\u{00AD}',
            '\u{FE0F}',
            '\u{180E}',
            '\u{1D173}',
            '\u{13439}',
        ] {
            let shown = escape(&format!("a{c}b")).into_owned();
            assert_eq!(
                shown,
                format!("a{}b", c.escape_unicode()),
                "U+{:04X}",
                c as u32
            );
        }
        // Control characters as before: newline, tab, ESC, DEL, a C1 control (CSI).
        assert_eq!(
            escape("a\nb\tc\u{1b}[2J\u{7f}\u{9b}"),
            "a\\nb\\tc\\u{1b}[2J\\u{7f}\\u{9b}"
        );
    }

    #[test]
    fn ordinary_text_in_any_script_is_shown_as_it_is_and_borrowed() {
        for text in [
            "dist/app.tar.gz",
            "café-ß-Ω-中文-עברית-العربية",
            "emoji \u{1F600} and a space\u{00A0}non-breaking",
            "C:\\path with\\backslashes \"quoted\"",
        ] {
            assert!(
                matches!(escape(text), Cow::Borrowed(t) if t == text),
                "{text}"
            );
        }
    }

    #[test]
    fn every_escaped_mark_is_one_the_standard_library_also_treats_as_unprintable() {
        // A cross-check of the table against std's own Unicode data (which `{:?}` uses):
        // every format character listed is one `escape_debug` escapes too. The Hangul
        // fillers are letters to std, invisible to a reader: the table's own addition.
        let hangul_fillers = ['\u{115F}', '\u{1160}', '\u{3164}', '\u{FFA0}'];
        let mut listed = 0;
        for cp in 0..=0x10FFFF_u32 {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            if !is_escaped(c) || hangul_fillers.contains(&c) {
                continue;
            }
            listed += 1;
            assert!(
                c.escape_debug().count() > 1,
                "U+{cp:04X} is escaped here but printable to std"
            );
        }
        assert!(listed > 4000, "{listed}");
    }

    /// `Default_Ignorable_Code_Point` as Unicode 15's `DerivedCoreProperties.txt` lists it,
    /// line by line.
    const DEFAULT_IGNORABLE: &[(u32, u32)] = &[
        (0x00AD, 0x00AD),
        (0x034F, 0x034F),
        (0x061C, 0x061C),
        (0x115F, 0x1160),
        (0x17B4, 0x17B5),
        (0x180B, 0x180D),
        (0x180E, 0x180E),
        (0x180F, 0x180F),
        (0x200B, 0x200F),
        (0x202A, 0x202E),
        (0x2060, 0x2064),
        (0x2065, 0x2065),
        (0x2066, 0x206F),
        (0x3164, 0x3164),
        (0xFE00, 0xFE0F),
        (0xFEFF, 0xFEFF),
        (0xFFA0, 0xFFA0),
        (0xFFF0, 0xFFF8),
        (0x1BCA0, 0x1BCA3),
        (0x1D173, 0x1D17A),
        (0xE0000, 0xE0000),
        (0xE0001, 0xE0001),
        (0xE0002, 0xE001F),
        (0xE0020, 0xE007F),
        (0xE0080, 0xE00FF),
        (0xE0100, 0xE01EF),
        (0xE01F0, 0xE0FFF),
    ];

    /// General category Cf as Unicode 15's `DerivedGeneralCategory.txt` lists it.
    const FORMAT: &[(u32, u32)] = &[
        (0x00AD, 0x00AD),
        (0x0600, 0x0605),
        (0x061C, 0x061C),
        (0x06DD, 0x06DD),
        (0x070F, 0x070F),
        (0x0890, 0x0891),
        (0x08E2, 0x08E2),
        (0x180E, 0x180E),
        (0x200B, 0x200F),
        (0x202A, 0x202E),
        (0x2060, 0x2064),
        (0x2066, 0x206F),
        (0xFEFF, 0xFEFF),
        (0xFFF9, 0xFFFB),
        (0x110BD, 0x110BD),
        (0x110CD, 0x110CD),
        (0x13430, 0x1343F),
        (0x1BCA0, 0x1BCA3),
        (0x1D173, 0x1D17A),
        (0xE0001, 0xE0001),
        (0xE0020, 0xE007F),
    ];

    fn listed(table: &[(u32, u32)], c: char) -> bool {
        table
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&u32::from(c)))
    }

    #[test]
    fn every_default_ignorable_and_format_character_is_escaped_and_no_other_is_ignorable() {
        // The other direction of the cross-check above, against the Unicode data written out
        // here: nothing of either list is missed (U+2065, unassigned but ignorable, was).
        let mut ignorable = 0;
        for cp in 0..=0x10FFFF_u32 {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            if listed(DEFAULT_IGNORABLE, c) || listed(FORMAT, c) {
                assert!(is_escaped(c), "U+{cp:04X} is not escaped");
            }
            assert_eq!(
                is_default_ignorable(c),
                listed(DEFAULT_IGNORABLE, c),
                "U+{cp:04X}"
            );
            ignorable += usize::from(is_default_ignorable(c));
        }
        assert_eq!(ignorable, 4174);
        // The separators are escaped too, and ordinary letters and spaces are not.
        for c in ['\u{2028}', '\u{2029}'] {
            assert!(is_escaped(c) && !is_default_ignorable(c));
        }
        for c in ['a', ' ', '\u{00A0}', '\u{3000}', 'é', '\u{1F600}'] {
            assert!(!is_escaped(c), "U+{:04X}", u32::from(c));
        }
    }

    #[test]
    fn control_characters_are_shown_not_sent_to_a_terminal() {
        assert_eq!(
            visible_controls(b"ok\tline\r\n\x1b]52;c;ZXZpbA==\x07\x1b[2J\x7f\x00 \xc3\xa9"),
            b"ok\tline\r\n^[]52;c;ZXZpbA==^G^[[2J^?^@ \xc3\xa9".to_vec()
        );
        // C1: U+009B (CSI) and U+009D (OSC) as UTF-8; other two-byte letters pass.
        assert_eq!(
            visible_controls(b"a\xc2\x9b2Jb\xc2\x9d0;t\xc2\xa0\xc3\x9b"),
            b"a\\u{9b}2Jb\\u{9d}0;t\xc2\xa0\xc3\x9b".to_vec()
        );
    }

    #[test]
    fn a_control_split_across_chunks_is_still_shown() {
        let mut s = VisibleStream::default();
        let mut out = s.show(b"x\xc2");
        out.extend(s.show(b"\x9b31m"));
        out.extend(s.show(b"\xc2"));
        out.extend(s.finish());
        assert_eq!(out, b"x\\u{9b}31m\xc2".to_vec());
    }
}
