//! The small field rules shared by the job spec and the operator configuration.
//!
//! Each check returns `Err(message)` with the message a user sees after the field path; the
//! callers attach the path. They are hand-written rather than regular expressions because this
//! crate takes no dependency for them and because a hand-written check can say what exactly is
//! wrong ("uppercase", "40 characters, expected 64").

use crate::error::quote;

/// The pattern job, step and tool names must match, as shown to users.
pub const NAME_PATTERN: &str = "[a-z0-9][a-z0-9._-]{0,62}";

/// Checks a job, step or tool name against [`NAME_PATTERN`].
pub fn check_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let rest_ok =
        bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if first_ok && rest_ok && name.len() <= 63 {
        Ok(())
    } else {
        Err(format!("must match {NAME_PATTERN}, got {}", quote(name)))
    }
}

/// Checks a sha256 digest: exactly 64 lowercase hex digits.
pub fn check_sha256(digest: &str) -> Result<(), String> {
    check_hex(digest, 64)
}

/// Checks a full git commit id: exactly 40 lowercase hex digits (SHA-1 object ids; a
/// SHA-256 repository's 64-digit ids are not accepted yet).
pub fn check_commit(commit: &str) -> Result<(), String> {
    check_hex(commit, 40)
}

fn check_hex(value: &str, len: usize) -> Result<(), String> {
    let hex = value
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if hex && value.len() == len {
        return Ok(());
    }
    let detail = if value.bytes().any(|b| b.is_ascii_uppercase()) && value.len() == len {
        " (uppercase is not accepted)".to_owned()
    } else if value.len() != len {
        format!(" ({} characters)", value.chars().count())
    } else {
        String::new()
    };
    Err(format!(
        "expected {len} lowercase hex digits, got {}{detail}",
        quote(value)
    ))
}

/// The URL schemes the runner fetches from.
pub const URL_SCHEMES: &[&str] = &["https", "http", "file"];

/// Checks a URL the runner will fetch: scheme `https`, `http` or `file`, a host for http(s),
/// an absolute path for `file`, and no whitespace or control characters. This is a shape
/// check only; where the URL may point (private addresses, file roots) is the runner's check.
pub fn check_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "expected a URL like https://host/path, got {}",
            quote(url)
        ));
    };
    if !URL_SCHEMES.contains(&scheme) {
        return Err(format!(
            "URL scheme must be https, http or file, got {}",
            quote(scheme)
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "URL must not contain spaces or control characters, got {}",
            quote(url)
        ));
    }
    if scheme == "file" {
        if !rest.starts_with('/') {
            return Err(format!(
                "a file URL needs an absolute path (file:///path), got {}",
                quote(url)
            ));
        }
    } else {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        if host.is_empty() || host.starts_with(':') {
            return Err(format!("URL has no host, got {}", quote(url)));
        }
        if authority.contains('@') {
            return Err("URL must not contain credentials (user@host)".to_owned());
        }
    }
    Ok(())
}

/// Checks an environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn check_env_key(key: &str) -> Result<(), String> {
    let mut bytes = key.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(())
    } else {
        Err(format!(
            "environment variable names must match [A-Za-z_][A-Za-z0-9_]*, got {}",
            quote(key)
        ))
    }
}

/// Checks an absolute filesystem path in the operator configuration.
pub fn check_absolute_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("must be an absolute path, got {}", quote(path)));
    }
    if path.contains('\0') {
        return Err("must not contain NUL".to_owned());
    }
    if path.split('/').any(|c| c == "..") {
        return Err(format!(
            "must not contain a .. component, got {}",
            quote(path)
        ));
    }
    Ok(())
}

/// A path segment for messages: `env.FOO`, or `env."a b"` when the key is not an identifier.
pub(crate) fn key_segment(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
    {
        key.to_owned()
    } else {
        quote(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_pattern() {
        for good in ["a", "0", "hello", "build-1.2_x", &"a".repeat(63)] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "Build",
            "-a",
            ".a",
            "_a",
            "a b",
            "a/b",
            "é",
            &"a".repeat(64),
        ] {
            assert!(
                check_name(bad)
                    .unwrap_err()
                    .starts_with("must match [a-z0-9]"),
                "{bad}"
            );
        }
    }

    #[test]
    fn digests_must_be_full_lowercase_hex() {
        assert_eq!(check_sha256(&"a".repeat(64)), Ok(()));
        assert!(check_sha256(&"A".repeat(64))
            .unwrap_err()
            .contains("uppercase"));
        assert!(check_sha256("abc").unwrap_err().contains("(3 characters)"));
        assert!(check_sha256(&"g".repeat(64))
            .unwrap_err()
            .contains("64 lowercase hex"));
        assert_eq!(check_commit(&"0".repeat(40)), Ok(()));
        assert!(check_commit(&"0".repeat(64))
            .unwrap_err()
            .contains("40 lowercase hex"));
    }

    #[test]
    fn urls_need_an_allowed_scheme_and_a_host_or_absolute_path() {
        for good in [
            "https://example.org/x.tar.gz",
            "http://10.0.0.1:8080/x",
            "file:///srv/tools/x.zip",
        ] {
            assert_eq!(check_url(good), Ok(()), "{good}");
        }
        assert!(check_url("ftp://example.org/x")
            .unwrap_err()
            .contains("scheme"));
        assert!(check_url("HTTPS://example.org/x")
            .unwrap_err()
            .contains("scheme"));
        assert!(check_url("example.org/x")
            .unwrap_err()
            .contains("expected a URL"));
        assert!(check_url("https:///x").unwrap_err().contains("no host"));
        assert!(check_url("file://relative/x")
            .unwrap_err()
            .contains("absolute"));
        assert!(check_url("https://a b/").unwrap_err().contains("spaces"));
        assert!(check_url("https://user:pw@example.org/")
            .unwrap_err()
            .contains("credentials"));
    }

    #[test]
    fn env_keys_are_shell_identifiers() {
        assert_eq!(check_env_key("_A1"), Ok(()));
        for bad in ["", "1A", "A-B", "A=B", "A B"] {
            assert!(check_env_key(bad).is_err(), "{bad}");
        }
    }
}
