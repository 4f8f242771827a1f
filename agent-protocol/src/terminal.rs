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
/// C0, DEL, C1), a format character (Cf: U+00AD soft hyphen, U+061C, U+200B..U+200F,
/// U+202A..U+202E, U+2060..U+2064, U+2066..U+206F, U+FEFF, the Arabic, Syriac and Egyptian
/// number and format marks, U+FFF9..U+FFFB, the tag characters), any other default-ignorable
/// code point (rendered as nothing: U+034F, the Hangul fillers U+115F, U+1160, U+3164,
/// U+FFA0, U+17B4, U+17B5, the variation selectors, U+FFF0..U+FFF8, U+E0000..U+E0FFF),
/// or a line or paragraph separator (U+2028, U+2029: a line break to many log viewers).
/// From Unicode 15 (`DerivedGeneralCategory.txt`, `DerivedCoreProperties.txt`).
pub fn is_escaped(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Format characters (Cf).
            '\u{00AD}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061C}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08E2}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                // Default-ignorable code points that are not Cf (tags and the variation
                // selectors supplement are in U+E0000..U+E0FFF).
                | '\u{034F}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFF8}'
                | '\u{E0000}'..='\u{E0FFF}'
                // Line and paragraph separators (Zl, Zp).
                | '\u{2028}'..='\u{2029}'
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
