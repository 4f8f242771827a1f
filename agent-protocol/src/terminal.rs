//! Text from jobs and runners shown on an operator's terminal.
//!
//! A job's output reaches an operator's terminal from `bulwark run` (the echo of its log) and
//! from `bulwark-coordinator jobs log` (a job of the fleet's). Escape sequences in it could
//! set the terminal's title, write its clipboard (OSC 52), redefine keys or hide lines, so
//! both show it through [`visible_controls`] ([`VisibleStream`] for a stream); the stored log
//! keeps the bytes as they were. Carriage returns pass: progress bars use them, and they
//! can only redraw the line they are on.

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
