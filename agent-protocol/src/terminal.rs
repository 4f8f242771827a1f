//! Text from jobs and runners shown on an operator's terminal.
//!
//! A job's output reaches an operator's terminal from `bulwark run` (the echo of its log) and
//! from `bulwark-coordinator jobs log` (a job of the fleet's). Escape sequences in it could
//! set the terminal's title, write its clipboard (OSC 52), redefine keys or hide lines, so
//! both show it through [`visible_controls`]; the stored log keeps the bytes as they were.

/// `data` with every C0 control character but tab, newline and carriage return, and DEL,
/// written in caret notation (`^[` for ESC).
pub fn visible_controls(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    for &b in data {
        match b {
            b'\t' | b'\n' | b'\r' => out.push(b),
            0..=0x1f => out.extend_from_slice(&[b'^', b + 0x40]),
            0x7f => out.extend_from_slice(b"^?"),
            _ => out.push(b),
        }
    }
    out
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
    }
}
