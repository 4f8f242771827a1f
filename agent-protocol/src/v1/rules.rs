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
/// an absolute path for `file`, no whitespace or control characters, and a URL the parser
/// takes. This is a shape check only; where the URL may point (private addresses, file roots)
/// is the runner's check. No message shows what could be a user name or password.
pub fn check_url(url: &str) -> Result<(), String> {
    // First, and whatever else is wrong with it.
    let parsed = url::Url::parse(url);
    let parsed_credentials = parsed
        .as_ref()
        .is_ok_and(|u| !u.username().is_empty() || u.password().is_some());
    if credentials_at(url).is_some() || parsed_credentials {
        return Err("URL must not contain credentials (user@host)".to_owned());
    }
    let shown = || quote(&redact_url(url));
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "expected a URL like https://host/path, got {}",
            shown()
        ));
    };
    if !URL_SCHEMES.contains(&scheme) {
        return Err(format!(
            "URL scheme must be https, http or file, got {}",
            quote(&redact_url(scheme))
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "URL must not contain spaces or control characters, got {}",
            shown()
        ));
    }
    if scheme == "file" {
        if !rest.starts_with('/') {
            return Err(format!(
                "a file URL needs an absolute path (file:///path), got {}",
                shown()
            ));
        }
    } else {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority.is_empty() || authority.starts_with(':') {
            return Err(format!("URL has no host, got {}", shown()));
        }
    }
    if let Err(e) = parsed {
        return Err(format!("not a valid URL ({e}): {}", shown()));
    }
    Ok(())
}

/// Checks a source URL (`source.git`, `source.url`): [`check_url`], and written exactly as the
/// runner will fetch it. The runner hands git and its HTTP client the URL parser's normal
/// form (`..` segments resolved, host lower-cased, default port dropped), while provenance
/// records the text of the spec; where the two differ, a verifier matching `source_uris`
/// would judge a URL other than the one fetched (`https://host/org/../attacker/app.git` was
/// fetched from `attacker/`). So the spec must say the normal form itself.
pub fn check_source_url(text: &str) -> Result<(), String> {
    check_url(text)?;
    let parsed = url::Url::parse(text)
        .map_err(|e| format!("not a valid URL ({e}): {}", quote(&redact_url(text))))?;
    if parsed.as_str() != text {
        return Err(format!(
            "write it as {} (the form the runner fetches and provenance records), not {}",
            quote(parsed.as_str()),
            quote(text)
        ));
    }
    Ok(())
}

/// Where what could be a user name or password lies in `url`, as `(start, at)`: from the
/// start of what could be its authority (after `scheme://` when that comes before the first
/// `@`, else from the beginning, as in `user:pw@host:path`) to the last `@` before the first
/// `/`, `?` or `#` after that start. Whether the text parses as a URL or not.
fn credentials_at(url: &str) -> Option<(usize, usize)> {
    let first_at = url.find('@')?;
    let start = url[..first_at].find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    url[start..end].rfind('@').map(|at| (start, start + at))
}

/// `url` as it may be shown in a message or log, with whatever could be a user name or
/// password replaced by `***`. An http(s) or file URL the parser takes is shown as written
/// when it has no credentials (an `@` in its path is a path: `https://host/@scope/pkg`), and
/// without them otherwise; any other text with an `@` (one the parser refuses, reads with
/// another scheme, or splits elsewhere) has everything from the start of what could be its
/// authority up to its last `@` hidden.
pub fn redact_url(url: &str) -> String {
    if let Ok(mut u) = url::Url::parse(url) {
        if URL_SCHEMES.contains(&u.scheme()) {
            if u.username().is_empty() && u.password().is_none() {
                if credentials_at(url).is_none() {
                    return url.to_owned();
                }
            } else {
                let _ = u.set_username("");
                let _ = u.set_password(None);
                return u.to_string();
            }
        }
    }
    // From the start of what could be the authority: after `scheme://` only when that comes
    // before the first `@` (`user:pw@host/x?u=https://a@b` has none before it).
    match (url.find('@'), url.rfind('@')) {
        (Some(first), Some(at)) => {
            let start = url[..first].find("://").map_or(0, |i| i + 3);
            format!("{}***{}", &url[..start], &url[at..])
        }
        _ => url.to_owned(),
    }
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
    fn source_urls_must_be_written_in_the_form_that_is_fetched() {
        for good in [
            "https://example.org/org/app.git",
            "http://10.0.0.1:8080/x.tar.gz",
            "file:///srv/repos/app",
        ] {
            assert_eq!(check_source_url(good), Ok(()), "{good}");
        }
        for (bad, normal) in [
            (
                "https://example.org/org/../attacker/app.git",
                "https://example.org/attacker/app.git",
            ),
            (
                "https://example.org/org/%2e%2e/attacker/app.git",
                "https://example.org/attacker/app.git",
            ),
            ("https://Example.ORG/app.git", "https://example.org/app.git"),
            (
                "https://example.org:443/app.git",
                "https://example.org/app.git",
            ),
            ("https://example.org", "https://example.org/"),
            (
                "https://evil.example\\.example.com/app.git",
                "https://evil.example/.example.com/app.git",
            ),
        ] {
            let err = check_source_url(bad).unwrap_err();
            assert!(
                err.starts_with(&format!("write it as \"{normal}\"")),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn credentials_are_never_shown_whatever_else_is_wrong_with_the_url() {
        // Each of these is also refused for another reason (a space, a scheme, no scheme, a
        // bad port); that reason's message used to quote the URL, token and all.
        for url in [
            "https://user:TOKEN@exa mple.org/x",
            "ftp://user:TOKEN@example.org/x",
            "user:TOKEN@example.org:repo.git",
            "https://user:TOKEN@example.org:notaport/x",
            "https:/user:TOKEN@example.org/x",
            "user:TOKEN@github.com/x?u=https://a",
        ] {
            let err = check_url(url).unwrap_err();
            assert!(!err.contains("TOKEN"), "{url}: {err}");
            assert!(err.contains("credentials"), "{url}: {err}");
            assert!(!redact_url(url).contains("TOKEN"), "{url}");
        }
        // A password with a `/`, `?` or `#` in it ends the authority early for a plain
        // reading; the URL does not parse, and what is shown hides up to the last `@`.
        for url in [
            "https://user:ab/TOKEN@github.com/org/repo.git",
            "https://user:ab?TOKEN@github.com/org/repo.git",
            "https//user:TOKEN@github.com/x",
        ] {
            let err = check_url(url).unwrap_err();
            assert!(!err.contains("TOKEN"), "{url}: {err}");
            assert!(!redact_url(url).contains("TOKEN"), "{url}");
            assert!(
                !check_source_url(url).unwrap_err().contains("TOKEN"),
                "{url}"
            );
        }
        assert_eq!(
            redact_url("https://user:ab/TOKEN@github.com/org/repo.git"),
            "https://***@github.com/org/repo.git"
        );
        assert_eq!(redact_url("https://u:p@h/a@b"), "https://h/a@b");
        assert_eq!(
            redact_url("user:TOKEN@host/x?u=https://a@b"),
            "***@b",
            "no scheme before the first @: hidden from the start"
        );
        assert_eq!(redact_url("https://h/a@b"), "https://h/a@b");
        assert_eq!(
            redact_url("https://registry.npmjs.org/@scope/pkg/-/pkg-1.0.0.tgz"),
            "https://registry.npmjs.org/@scope/pkg/-/pkg-1.0.0.tgz"
        );
        assert_eq!(
            check_url("https://registry.npmjs.org/@scope/pkg/-/pkg-1.0.0.tgz"),
            Ok(())
        );
    }

    #[test]
    fn env_keys_are_shell_identifiers() {
        assert_eq!(check_env_key("_A1"), Ok(()));
        for bad in ["", "1A", "A-B", "A=B", "A B"] {
            assert!(check_env_key(bad).is_err(), "{bad}");
        }
    }
}
