//! Errors for everything this crate parses: one shape for job specs and the operator config.
//!
//! There are two kinds, because users fix them differently. A [`SpecError::Syntax`] means the
//! document could not be read into the wire types at all (TOML or JSON syntax, an unknown key, a
//! value of the wrong type); serde stops at the first one, so there is exactly one message, with
//! the line and column. A [`SpecError::Invalid`] means the document was read but breaks rules;
//! validation does not stop at the first one, so the user sees every problem at once, each as a
//! [`FieldError`] naming the field as a path (`steps[1].name`).
//!
//! The input is untrusted (a job spec comes from the repository being built), and these messages
//! end up in the daemon's logs and on terminals. So every value quoted back is escaped (no
//! control characters) and truncated, and the number of field errors reported is bounded.

use std::fmt;

/// Longest piece of user input quoted back in a message, in characters.
const MAX_QUOTED_CHARS: usize = 64;

/// Longest parser message kept, in characters.
const MAX_SYNTAX_MESSAGE_CHARS: usize = 300;

/// Most field errors one [`SpecError::Invalid`] reports; the rest are summarised in one line.
pub const MAX_FIELD_ERRORS: usize = 50;

/// One broken rule, at one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Where, as a path from the document root: `name`, `steps[1].name`, `steps[0].env.FOO`,
    /// `resources.memory`, `limits.max_timeout`. Empty only for the "and N more" summary line.
    pub path: String,
    /// What is wrong and, where there is one, what to do instead; lower case, no final period.
    pub message: String,
}

impl FieldError {
    /// A field error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a job spec or configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The document is not valid TOML/JSON, names an unknown key, or has a value of the wrong
    /// type. The message says where (`line 3, column 1`) and names the key.
    #[error("{message}")]
    Syntax {
        /// One line: position, the parser's message, and the offending source line.
        message: String,
    },
    /// The document was read, but breaks these rules (in document order).
    #[error("{}", display_all(.0))]
    Invalid(Vec<FieldError>),
}

impl SpecError {
    /// The field errors, or an empty slice for a syntax error.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            SpecError::Invalid(errors) => errors,
            SpecError::Syntax { .. } => &[],
        }
    }

    /// Builds the error for a failed TOML deserialization of `input`, flattened to one line
    /// with the position and the offending line quoted.
    pub(crate) fn from_toml(input: &str, error: &toml::de::Error) -> SpecError {
        let message = one_line(error.message());
        let Some(span) = error.span() else {
            return SpecError::Syntax { message };
        };
        let start = floor_char_boundary(input, span.start.min(input.len()));
        let line_start = input[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = input[start..].find('\n').map_or(input.len(), |i| start + i);
        let line = input[..start].matches('\n').count() + 1;
        let column = input[line_start..start].chars().count() + 1;
        let source_line = input[line_start..line_end].trim();
        let message = if source_line.is_empty() {
            format!("line {line}, column {column}: {message}")
        } else {
            format!(
                "line {line}, column {column}: {message} (at {})",
                quote(source_line)
            )
        };
        SpecError::Syntax { message }
    }

    /// Builds the error for a failed JSON deserialization (serde_json's message already says
    /// `at line L column C`).
    pub(crate) fn from_json(error: &serde_json::Error) -> SpecError {
        SpecError::Syntax {
            message: one_line(&error.to_string()),
        }
    }

    /// `Ok(value)` when no errors were collected, else `Invalid` with at most
    /// [`MAX_FIELD_ERRORS`] of them and a summary line for the rest.
    pub(crate) fn check<T>(mut errors: Vec<FieldError>, value: T) -> Result<T, SpecError> {
        if errors.is_empty() {
            return Ok(value);
        }
        if errors.len() > MAX_FIELD_ERRORS {
            let more = errors.len() - MAX_FIELD_ERRORS;
            errors.truncate(MAX_FIELD_ERRORS);
            errors.push(FieldError::new("", format!("and {more} more errors")));
        }
        Err(SpecError::Invalid(errors))
    }
}

fn display_all(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn floor_char_boundary(s: &str, mut index: usize) -> usize {
    while !s.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// Collapses a multi-line parser message into one bounded line, escaped as
/// [`crate::terminal::escape`] escapes (control characters, marks that hide or reorder
/// text): parser messages quote keys and values from the input (`unknown field ...`).
fn one_line(message: &str) -> String {
    let joined = message
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let mut out = String::new();
    for (count, c) in joined.chars().enumerate() {
        if count == MAX_SYNTAX_MESSAGE_CHARS {
            out.push('…');
            break;
        }
        out.push(c);
    }
    crate::terminal::escape(&out).into_owned()
}

/// Quotes user input for a message: double quotes, escaped as Rust's `{:?}` escapes (quotes,
/// backslashes, control and other unprintable characters) and as
/// [`crate::terminal::escape`] escapes (what `{:?}` leaves: the invisible Hangul fillers), at
/// most 64 characters and an ellipsis after that.
pub fn quote(s: &str) -> String {
    let mut chars = s.chars();
    let head: String = chars.by_ref().take(MAX_QUOTED_CHARS).collect();
    let quoted = crate::terminal::quoted(&head);
    if chars.next().is_some() {
        format!("{quoted}…")
    } else {
        quoted
    }
}

/// Collects field errors during validation, with paths built from a prefix.
#[derive(Debug, Default)]
pub(crate) struct Errors {
    pub(crate) list: Vec<FieldError>,
}

impl Errors {
    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.list.push(FieldError::new(path, message));
    }

    /// Records `result`'s error at `path`, returning its value when it has one.
    pub(crate) fn take<T>(&mut self, path: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(message) => {
                self.push(path, message);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_error_displays_as_path_colon_message() {
        let e = FieldError::new(
            "steps[1].name",
            "must match [a-z0-9][a-z0-9._-]{0,62}, got \"Build\"",
        );
        assert_eq!(
            e.to_string(),
            "steps[1].name: must match [a-z0-9][a-z0-9._-]{0,62}, got \"Build\""
        );
    }

    #[test]
    fn quoted_input_is_escaped_and_truncated() {
        assert_eq!(quote("a\u{1b}[2Jb\n"), "\"a\\u{1b}[2Jb\\n\"");
        assert_eq!(
            quote("x\u{202e}y\u{200b}z\u{3164}"),
            "\"x\\u{202e}y\\u{200b}z\\u{3164}\""
        );
        let long = "x".repeat(1000);
        let q = quote(&long);
        assert!(q.len() < 80 && q.ends_with('…'), "{q}");
    }

    #[test]
    fn too_many_field_errors_are_summarised() {
        let errors = (0..200)
            .map(|i| FieldError::new(format!("f{i}"), "bad"))
            .collect();
        let err = SpecError::check(errors, ()).unwrap_err();
        assert_eq!(err.field_errors().len(), MAX_FIELD_ERRORS + 1);
        assert!(err.to_string().ends_with("and 150 more errors"));
    }

    #[test]
    fn toml_errors_are_one_line_with_position_and_source_line() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct T {
            a: u32,
        }
        let input = "a = 1\nbogus = 2\n";
        let err = toml::from_str::<T>(input).unwrap_err();
        let msg = SpecError::from_toml(input, &err).to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(
            msg.starts_with("line 2, column 1: unknown field `bogus`"),
            "{msg}"
        );
        assert!(msg.ends_with("(at \"bogus = 2\")"), "{msg}");
        let input = format!("\"\\u001b[2J{}\" = 1\n", "k".repeat(1000));
        let err = toml::from_str::<T>(&input).unwrap_err();
        let msg = SpecError::from_toml(&input, &err).to_string();
        assert!(
            !msg.contains('\u{1b}') && msg.chars().count() < 400,
            "{msg}"
        );
    }
}
