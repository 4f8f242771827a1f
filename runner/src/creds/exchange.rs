//! The three exchanges: AWS STS `AssumeRoleWithWebIdentity`, OAuth 2.0 token exchange
//! (RFC 8693) and Vault's JWT login. Each is one POST of the identity token; each answer is
//! parsed strictly (exactly the fields the job gets, each present once), since a half-parsed
//! answer would hand the job a credential that does not work, or the wrong one.

use std::time::{Duration, SystemTime};

use bulwark_protocol::{CredentialKind, CredentialProvider};

use super::{Issued, Secret};
use crate::tools::fetch::{post, FetchPolicy};

/// What went wrong with one exchange. Messages never hold the identity token: the service's
/// own words are masked of it and cut short (nothing has been issued when they are made).
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The request never got an answer (address rules, connect, TLS, timeout).
    #[error("credentials.{name}: {endpoint}: {reason}")]
    Request {
        /// The credential.
        name: String,
        /// Its endpoint, without query.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The service refused the exchange.
    #[error("credentials.{name}: the service refused the exchange (HTTP {status}): {message}")]
    Refused {
        /// The credential.
        name: String,
        /// HTTP status.
        status: u16,
        /// What it said.
        message: String,
    },
    /// The answer is not what the protocol says.
    #[error("credentials.{name}: the service's answer is unusable: {reason}")]
    Answer {
        /// The credential.
        name: String,
        /// Why.
        reason: String,
    },
}

/// The file, beside `credentials`, that the AWS `config` file's `credential_process` prints.
pub const AWS_PROCESS_FILE: &str = "credential-process.json";

/// An AWS config file whose default profile takes its credentials from `credential_process`,
/// reading the credential's current values from [`AWS_PROCESS_FILE`]. Holds no secret. The
/// command is split on spaces by botocore and run by `sh -c` by the Go, Java and JavaScript
/// SDKs; `name` matches the spec's name pattern, so it needs no quoting. `cat` is looked up
/// on the step's `PATH` (a pinned root filesystem must have it, and `/bin/sh`).
fn aws_config(name: &str) -> String {
    format!(
        "[default]\ncredential_process = cat {}/{name}/{AWS_PROCESS_FILE}\n",
        bulwark_sandbox::mount::CREDENTIALS_DIR
    )
}

/// The files of an AWS session. Each value goes into the INI file's lines and into a JSON
/// string as it is, so none may hold whitespace, a control character, a quote or a backslash
/// (AWS's keys and tokens are base64 and never do).
fn aws_issued(
    name: &str,
    key_id: Secret,
    secret: Secret,
    session_token: Secret,
    expires: String,
) -> Result<Issued, String> {
    for v in [&key_id, &secret, &session_token] {
        check_plain(v.expose())
            .and_then(|()| check_unescaped(v.expose()))
            .map_err(|e| format!("a credential value {e}"))?;
    }
    check_plain(&expires)
        .and_then(|()| check_unescaped(&expires))
        .map_err(|e| format!("Expiration {e}"))?;
    let (k, s, t) = (key_id.expose(), secret.expose(), session_token.expose());
    let credentials = joined(&[
        "[default]\naws_access_key_id = ",
        k,
        "\naws_secret_access_key = ",
        s,
        "\naws_session_token = ",
        t,
        "\n",
    ]);
    // What `credential_process` prints (the SDKs' process credential provider, version 1):
    // an SDK that took its credentials from it runs it again as they near their expiry, and
    // so reads the renewed ones without restarting.
    let process = joined(&[
        "{\"Version\": 1, \"AccessKeyId\": \"",
        k,
        "\", \"SecretAccessKey\": \"",
        s,
        "\", \"SessionToken\": \"",
        t,
        "\", \"Expiration\": \"",
        &expires,
        "\"}\n",
    ]);
    Ok(Issued {
        name: name.to_string(),
        kind: "aws".into(),
        files: vec![
            ("credentials".into(), credentials),
            (AWS_PROCESS_FILE.into(), process),
            ("config".into(), Secret::new(aws_config(name))),
            ("expiration".into(), Secret::new(format!("{expires}\n"))),
        ],
        expires: Some(expires),
        secrets: vec![key_id, secret, session_token],
    })
}

/// One secret made of `parts`, in a string allocated once at its final size: growing it
/// would leave a copy of what was written so far in the freed, unzeroed buffer.
fn joined(parts: &[&str]) -> Secret {
    let mut s = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        s.push_str(p);
    }
    Secret::new(s)
}

/// The shortest AWS session (AWS's minimum) and the longest asked for.
const AWS_MIN_SESSION: u64 = 900;
const AWS_MAX_SESSION: u64 = 3600;

/// Exchanges `token` (the job's identity token) for the credential `name` configured as
/// `provider`. `job_timeout` bounds the lifetime asked for where the service takes one;
/// `job_id` names the session.
pub fn exchange(
    name: &str,
    provider: &CredentialProvider,
    token: &str,
    job_timeout: Duration,
    job_id: &str,
    policy: &FetchPolicy,
) -> Result<Issued, ExchangeError> {
    let answer = |status: u16, body: &[u8], extract: &dyn Fn(&str) -> Option<String>| {
        let text = String::from_utf8_lossy(body);
        let said = extract(&text).unwrap_or_else(|| format!("{} bytes", body.len()));
        ExchangeError::Refused {
            name: name.to_string(),
            status,
            message: clean(&said, token),
        }
    };
    let bad = |reason: &str| ExchangeError::Answer {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    let send = |url: &str, content_type: &str, body: Vec<u8>| {
        post(
            url,
            policy,
            &[
                ("content-type", content_type),
                ("accept", "application/json, text/xml"),
            ],
            body,
        )
        .map_err(|e| ExchangeError::Request {
            name: name.to_string(),
            endpoint: crate::tools::fetch::display_url(url),
            reason: clean(&format!("{:#}", anyhow::Error::new(e)), token),
        })
        // The answer holds the issued secrets: zeroed when dropped, whichever way this ends.
        .map(|(status, body)| (status, zeroize::Zeroizing::new(body)))
    };
    match &provider.kind {
        CredentialKind::Aws { role_arn } => {
            let seconds = job_timeout
                .as_secs()
                .clamp(AWS_MIN_SESSION, AWS_MAX_SESSION);
            let session: String = format!("bulwark-{job_id}")
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || "+=,.@-_".contains(*c))
                .take(64)
                .collect();
            let form = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("Action", "AssumeRoleWithWebIdentity")
                .append_pair("Version", "2011-06-15")
                .append_pair("RoleArn", role_arn)
                .append_pair("RoleSessionName", &session)
                .append_pair("DurationSeconds", &seconds.to_string())
                .append_pair("WebIdentityToken", token)
                .finish();
            let (status, body) = send(
                &provider.endpoint,
                "application/x-www-form-urlencoded",
                form.into_bytes(),
            )?;
            if status != 200 {
                return Err(answer(status, &body, &|t| {
                    let code = xml_text(t, "Code")?;
                    let message = xml_text(t, "Message").unwrap_or_default();
                    Some(format!("{code}: {message}"))
                }));
            }
            let text = std::str::from_utf8(&body).map_err(|_| bad("not UTF-8"))?;
            let field = |tag: &str| {
                xml_text(text, tag).ok_or_else(|| bad(&format!("no single <{tag}> in the answer")))
            };
            let key_id = Secret::new(field("AccessKeyId")?);
            let secret = Secret::new(field("SecretAccessKey")?);
            let session_token = Secret::new(field("SessionToken")?);
            let expires = field("Expiration")?;
            aws_issued(name, key_id, secret, session_token, expires).map_err(|e| bad(&e))
        }
        CredentialKind::OauthTokenExchange { scope, resource } => {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair(
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            )
            .append_pair("subject_token", token)
            .append_pair("subject_token_type", "urn:ietf:params:oauth:token-type:jwt")
            .append_pair(
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            );
            if let Some(r) = resource {
                form.append_pair("audience", r);
            }
            if let Some(s) = scope {
                form.append_pair("scope", s);
            }
            let (status, body) = send(
                &provider.endpoint,
                "application/x-www-form-urlencoded",
                form.finish().into_bytes(),
            )?;
            if status != 200 {
                return Err(answer(status, &body, &|t| {
                    let v: serde_json::Value = serde_json::from_str(t).ok()?;
                    let e = v.get("error")?.as_str()?;
                    let d = v
                        .get("error_description")
                        .and_then(|d| d.as_str())
                        .unwrap_or("");
                    Some(format!("{e}: {d}"))
                }));
            }
            let answer: OauthAnswer = serde_json::from_slice(&body)
                .map_err(|e| bad(&format!("not a token answer ({})", e.classify_name())))?;
            check_plain(answer.access_token.expose())
                .map_err(|e| bad(&format!("access_token {e}")))?;
            Ok(token_credential(
                name,
                "oauth-token-exchange",
                answer.access_token.clone(),
                answer.expires_in.map(in_seconds),
            ))
        }
        CredentialKind::Vault { role, mount } => {
            let url = format!(
                "{}/v1/auth/{mount}/login",
                provider.endpoint.trim_end_matches('/')
            );
            let body = serde_json::json!({ "role": role, "jwt": token }).to_string();
            let (status, body) = send(&url, "application/json", body.into_bytes())?;
            if status != 200 {
                return Err(answer(status, &body, &|t| {
                    let v: serde_json::Value = serde_json::from_str(t).ok()?;
                    let errors = v.get("errors")?.as_array()?;
                    Some(
                        errors
                            .iter()
                            .filter_map(|e| e.as_str())
                            .collect::<Vec<_>>()
                            .join("; "),
                    )
                }));
            }
            let answer: VaultAnswer = serde_json::from_slice(&body)
                .map_err(|e| bad(&format!("not a login answer ({})", e.classify_name())))?;
            let client_token = answer.auth.client_token.expose();
            check_plain(client_token).map_err(|e| bad(&format!("auth.client_token {e}")))?;
            // Vault's lease_duration 0 is a token that does not expire: no expiry recorded.
            let expires = answer
                .auth
                .lease_duration
                .filter(|&d| d > 0)
                .map(in_seconds);
            Ok(token_credential(
                name,
                "vault",
                answer.auth.client_token.clone(),
                expires,
            ))
        }
    }
}

/// An RFC 8693 answer: the fields the job gets, each at most once (serde refuses a duplicate
/// field, where a generic JSON value would keep the last one); others are ignored.
#[derive(serde::Deserialize)]
struct OauthAnswer {
    access_token: Secret,
    expires_in: Option<u64>,
}

/// A Vault login answer (`auth.client_token`, `auth.lease_duration`), likewise.
#[derive(serde::Deserialize)]
struct VaultAnswer {
    auth: VaultAuth,
}

#[derive(serde::Deserialize)]
struct VaultAuth {
    client_token: Secret,
    lease_duration: Option<u64>,
}

/// Why a service's JSON answer could not be read, without quoting it (it may hold a secret).
trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        use serde_json::error::Category;
        match self.classify() {
            Category::Io => "unreadable",
            Category::Syntax | Category::Eof => "not JSON",
            Category::Data => "a field missing, repeated or of the wrong type",
        }
    }
}

fn token_credential(name: &str, kind: &str, token: Secret, expires: Option<String>) -> Issued {
    // Joined at its final size: `format!` would grow the string past the token and leave
    // the whole token in the buffer it freed.
    let mut files = vec![("token".to_string(), joined(&[token.expose(), "\n"]))];
    if let Some(e) = &expires {
        files.push(("expiration".into(), Secret::new(format!("{e}\n"))));
    }
    Issued {
        name: name.to_string(),
        kind: kind.to_string(),
        expires,
        files,
        secrets: vec![token],
    }
}

fn in_seconds(secs: u64) -> String {
    let at = SystemTime::now() + Duration::from_secs(secs.min(10 * 365 * 86400));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A value written into a file the job reads, or into `result.json`: no control characters
/// (a newline in a session token would break the AWS credentials file's lines), bounded.
fn check_plain(v: &str) -> Result<(), &'static str> {
    if v.is_empty() {
        return Err("is empty");
    }
    if v.len() > 16 * 1024 {
        return Err("is longer than 16 KiB");
    }
    if v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("holds whitespace or control characters");
    }
    Ok(())
}

/// A value written inside a JSON string without escaping: no `"` and no `\\`.
fn check_unescaped(v: &str) -> Result<(), &'static str> {
    if v.contains(['"', '\\']) {
        return Err("holds a quote or a backslash");
    }
    Ok(())
}

/// The text of the only `<tag>` element in `xml`, entities decoded; `None` when there is none
/// or more than one. A deliberately small reader for the fixed shape of an STS answer.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    if xml[start..].contains(&open) {
        return None;
    }
    let end = start + xml[start..].find(&close)?;
    let raw = xml[start..end].trim();
    if raw.contains('<') {
        return None;
    }
    // One pass into a string of its final capacity: the value is a secret, and a chain of
    // `replace` calls would leave a copy of it in each freed intermediate string.
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let entity = [
            ("&lt;", '<'),
            ("&gt;", '>'),
            ("&quot;", '"'),
            ("&apos;", '\''),
            ("&amp;", '&'),
        ]
        .into_iter()
        .find(|(e, _)| rest.starts_with(e));
        match entity {
            Some((e, c)) => {
                out.push(c);
                rest = &rest[e.len()..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    Some(out)
}

/// A service's message made safe to print: the token masked, control characters replaced,
/// at most 300 characters.
fn clean(message: &str, token: &str) -> String {
    let masked = if token.len() >= super::mask::MIN_MASKED_LEN {
        message.replace(token, "***")
    } else {
        message.to_string()
    };
    let mut out = crate::daemon::client::printable(&masked);
    if out.chars().count() > 300 {
        out = out.chars().take(300).collect::<String>() + "…";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sts_answer_is_read_strictly() {
        let ok =
            "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
            <AccessKeyId>ASIAEXAMPLE</AccessKeyId><SecretAccessKey>s/e+c&amp;r</SecretAccessKey>\
            <SessionToken>tok</SessionToken><Expiration>2026-11-26T20:00:00Z</Expiration>\
            </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>";
        assert_eq!(xml_text(ok, "AccessKeyId").unwrap(), "ASIAEXAMPLE");
        assert_eq!(xml_text(ok, "SecretAccessKey").unwrap(), "s/e+c&r");
        // Each entity decoded once, left to right: `&amp;quot;` is the text `&quot;`.
        assert_eq!(
            xml_text("<A>&lt;&gt;&quot;&apos;&amp;quot;&#38;&</A>", "A").unwrap(),
            "<>\"'&quot;&#38;&"
        );
        let decoded = xml_text("<A>abc&amp;def</A>", "A").unwrap();
        assert_eq!(decoded.capacity(), "abc&amp;def".len(), "allocated once");
        assert_eq!(xml_text(ok, "Missing"), None);
        let twice = "<A>1</A><A>2</A>";
        assert_eq!(xml_text(twice, "A"), None, "an element twice is refused");
        assert_eq!(
            xml_text("<A><B>x</B></A>", "A"),
            None,
            "nested markup is refused"
        );
    }

    #[test]
    fn a_services_message_never_carries_the_token() {
        let token = "eyJhbGciOiJFUzI1NiJ9.secret.sig";
        let m = clean(&format!("bad token {token}\x1b[2J"), token);
        assert_eq!(m, "bad token ***\\u{1b}[2J");
    }

    #[test]
    fn a_json_answer_with_a_repeated_field_is_refused_not_read_last_wins() {
        let twice = br#"{"access_token": "aaaaaaaaaaaa", "access_token": "bbbbbbbbbbbb"}"#;
        let e = serde_json::from_slice::<OauthAnswer>(twice).err().unwrap();
        assert_eq!(
            e.classify_name(),
            "a field missing, repeated or of the wrong type"
        );
        assert!(!e.classify_name().contains("aaaa"));
        let ok: OauthAnswer =
            serde_json::from_slice(br#"{"access_token": "tok", "token_type": "Bearer"}"#).unwrap();
        assert_eq!(ok.access_token.expose(), "tok");
        let v = br#"{"auth": {"client_token": "x", "client_token": "y"}}"#;
        assert!(serde_json::from_slice::<VaultAnswer>(v).is_err());
    }

    #[test]
    fn an_aws_session_is_a_credentials_file_and_what_credential_process_prints() {
        let s = |v: &str| Secret::new(v.to_string());
        let issued = aws_issued(
            "aws-release",
            s("ASIAEXAMPLE"),
            s("sEcR/et+="),
            s("to/ken=="),
            "2026-11-26T20:00:00Z".into(),
        )
        .unwrap();
        let file = |n: &str| {
            issued
                .files
                .iter()
                .find(|(name, _)| name == n)
                .unwrap()
                .1
                .expose()
                .to_string()
        };
        assert_eq!(
            file("credentials"),
            "[default]\naws_access_key_id = ASIAEXAMPLE\naws_secret_access_key = sEcR/et+=\n\
             aws_session_token = to/ken==\n"
        );
        let printed: serde_json::Value = serde_json::from_str(&file(AWS_PROCESS_FILE)).unwrap();
        assert_eq!(
            printed,
            serde_json::json!({"Version": 1, "AccessKeyId": "ASIAEXAMPLE",
                "SecretAccessKey": "sEcR/et+=", "SessionToken": "to/ken==",
                "Expiration": "2026-11-26T20:00:00Z"})
        );
        assert_eq!(
            file("config"),
            "[default]\ncredential_process = cat \
             /run/credentials/aws-release/credential-process.json\n"
        );
        assert!(!file("config").contains("sEcR"), "config holds no secret");
        assert_eq!(file("expiration"), "2026-11-26T20:00:00Z\n");
        // Allocated once at their size: nothing was left behind by growing.
        for (_, f) in &issued.files[..2] {
            assert_eq!(f.expose().len(), f.0.capacity());
        }
        // A value that would need a JSON escape, or break an INI line, is refused.
        for bad in ["a\"b", "a\\b", "a b", "a\nb"] {
            let e = aws_issued("a", s(bad), s("x"), s("y"), "2026-11-26T20:00:00Z".into());
            assert!(e.unwrap_err().starts_with("a credential value "), "{bad}");
        }
        let e = aws_issued("a", s("k"), s("x"), s("y"), "2026\"x".into());
        assert!(e.unwrap_err().starts_with("Expiration "));
    }

    #[test]
    fn a_token_file_is_allocated_once_at_its_size() {
        let token = "ya29.".to_owned() + &"t".repeat(200);
        let issued = token_credential(
            "gcp",
            "oauth-token-exchange",
            Secret::new(token.clone()),
            Some("2026-11-26T20:00:00Z".into()),
        );
        let (name, file) = &issued.files[0];
        assert_eq!(name, "token");
        assert_eq!(file.expose(), format!("{token}\n"));
        assert_eq!(file.expose().len(), file.0.capacity(), "grown, not joined");
    }

    #[test]
    fn values_with_line_breaks_are_refused() {
        assert!(check_plain("abc\n[evil]").is_err());
        assert!(check_plain("").is_err());
        assert!(check_plain("abc").is_ok());
    }
}
