//! `[credentials.<name>]` in the operator's configuration: where a trusted job's identity
//! token is exchanged for short-lived credentials (docs/credentials.md).
//!
//! The operator names each credential and says which service issues it; a job spec can only
//! ask for a name. The kinds are the three exchanges clouds and secret stores speak for OIDC
//! workload identity: AWS `AssumeRoleWithWebIdentity`, OAuth 2.0 token exchange (RFC 8693, as
//! GCP's STS speaks it) and Vault's JWT login. Each kind's required keys are checked here, so a
//! misconfigured runner fails at start-up with the key's path, not in the middle of a release.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::rules::{check_name, key_segment};
use crate::error::{quote, Errors};

/// One configured credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialProvider {
    /// Where the exchange is made: an `https://` URL (`http://` only to a loopback or private
    /// address the fetch rules allow, which the runner checks when it connects).
    pub endpoint: String,
    /// The `aud` of the identity token the coordinator mints for this exchange.
    pub audience: String,
    /// What is exchanged, and the kind's own settings.
    pub kind: CredentialKind,
}

/// The exchange, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialKind {
    /// `kind = "aws"`: STS `AssumeRoleWithWebIdentity`.
    Aws {
        /// `role_arn`: the role to assume.
        role_arn: String,
    },
    /// `kind = "oauth-token-exchange"`: RFC 8693 token exchange.
    OauthTokenExchange {
        /// `scope`: the requested scope, if any.
        scope: Option<String>,
        /// `resource`: the RFC 8693 `audience` parameter for the issued token, if any (the
        /// STS's own notion of the target; GCP wants the workload identity provider).
        resource: Option<String>,
    },
    /// `kind = "vault"`: Vault JWT auth `login`.
    Vault {
        /// `role`: the Vault role to log in as.
        role: String,
        /// `mount`: the auth method's mount path (default `jwt`).
        mount: String,
    },
}

impl CredentialKind {
    /// The spelling in the configuration and in `result.json`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CredentialKind::Aws { .. } => "aws",
            CredentialKind::OauthTokenExchange { .. } => "oauth-token-exchange",
            CredentialKind::Vault { .. } => "vault",
        }
    }
}

/// The section as serde reads it.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawProvider {
    kind: Option<String>,
    endpoint: Option<String>,
    audience: Option<String>,
    role_arn: Option<String>,
    scope: Option<String>,
    resource: Option<String>,
    role: Option<String>,
    mount: Option<String>,
}

/// Longest value of any credential setting (an ARN, a URL, a scope list).
const MAX_SETTING: usize = 2048;

/// Checks every `[credentials.<name>]` section; problems go to `errors` by key path.
pub(super) fn convert(
    raw: BTreeMap<String, RawProvider>,
    errors: &mut Errors,
) -> BTreeMap<String, CredentialProvider> {
    let mut out = BTreeMap::new();
    for (name, p) in raw {
        let at = format!("credentials.{}", key_segment(&name));
        let mut ok = errors.take(&at, check_name(&name)).is_some();
        let mut need = |key: &str, v: &Option<String>, errors: &mut Errors| -> String {
            match setting(v) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(format!("{at}.{key}"), e);
                    ok = false;
                    String::new()
                }
            }
        };
        let endpoint = need("endpoint", &p.endpoint, errors);
        let audience = need("audience", &p.audience, errors);
        let (kind, not_for_kind) = match p.kind.as_deref() {
            Some("aws") => (
                CredentialKind::Aws {
                    role_arn: need("role_arn", &p.role_arn, errors),
                },
                [
                    ("scope", &p.scope),
                    ("resource", &p.resource),
                    ("role", &p.role),
                    ("mount", &p.mount),
                ]
                .to_vec(),
            ),
            Some("oauth-token-exchange") => (
                CredentialKind::OauthTokenExchange {
                    scope: p.scope.clone(),
                    resource: p.resource.clone(),
                },
                [
                    ("role_arn", &p.role_arn),
                    ("role", &p.role),
                    ("mount", &p.mount),
                ]
                .to_vec(),
            ),
            Some("vault") => (
                CredentialKind::Vault {
                    role: need("role", &p.role, errors),
                    mount: p.mount.clone().unwrap_or_else(|| "jwt".to_string()),
                },
                [
                    ("role_arn", &p.role_arn),
                    ("scope", &p.scope),
                    ("resource", &p.resource),
                ]
                .to_vec(),
            ),
            Some(other) => {
                errors.push(format!("{at}.kind"), format!("{} is not a credential kind; use \"aws\", \"oauth-token-exchange\" or \"vault\"", quote(other)));
                continue;
            }
            None => {
                errors.push(
                    format!("{at}.kind"),
                    "missing; use \"aws\", \"oauth-token-exchange\" or \"vault\"",
                );
                continue;
            }
        };
        for (key, v) in not_for_kind {
            if v.is_some() {
                errors.push(
                    format!("{at}.{key}"),
                    format!("is not a setting of kind {}", quote(kind.as_str())),
                );
                ok = false;
            }
        }
        for (key, v) in [("scope", &p.scope), ("resource", &p.resource)] {
            if let Some(Err(e)) = v.as_ref().map(|_| setting(v)) {
                errors.push(format!("{at}.{key}"), e);
                ok = false;
            }
        }
        match &kind {
            CredentialKind::Aws { role_arn }
                if !role_arn.is_empty() && !role_arn.starts_with("arn:") =>
            {
                errors.push(
                    format!("{at}.role_arn"),
                    format!("{} is not an ARN (arn:...:role/NAME)", quote(role_arn)),
                );
                ok = false;
            }
            CredentialKind::Vault { mount, .. } if !is_mount_path(mount) => {
                errors.push(
                    format!("{at}.mount"),
                    format!(
                        "{} is not a Vault mount path (like \"jwt\" or \"ci/jwt\")",
                        quote(mount)
                    ),
                );
                ok = false;
            }
            _ => {}
        }
        if !endpoint.is_empty() {
            if let Err(e) = check_endpoint(&endpoint) {
                errors.push(format!("{at}.endpoint"), e);
                ok = false;
            }
        }
        if ok {
            out.insert(
                name,
                CredentialProvider {
                    endpoint,
                    audience,
                    kind,
                },
            );
        }
    }
    out
}

/// A setting's value: present, non-empty, bounded, no control characters.
fn setting(v: &Option<String>) -> Result<String, String> {
    match v {
        None => Err("missing".into()),
        Some(v) if v.len() > MAX_SETTING => Err(format!("longer than {MAX_SETTING} bytes")),
        Some(v) if v.is_empty() || v.chars().any(char::is_control) => {
            Err("must be a non-empty value without control characters".into())
        }
        Some(v) => Ok(v.clone()),
    }
}

fn is_mount_path(mount: &str) -> bool {
    !mount.is_empty()
        && mount
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
        && mount
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
}

fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let url = url::Url::parse(endpoint).map_err(|e| format!("{}: {e}", quote(endpoint)))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials (user@host)".into());
    }
    if url.fragment().is_some() || url.query().is_some() {
        return Err("must not have a query or fragment".into());
    }
    match url.scheme() {
        "https" | "http" => Ok(()),
        other => Err(format!("scheme {} is not https", quote(other))),
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn errors(toml: &str) -> String {
        Config::from_toml_str(toml).unwrap_err().to_string()
    }

    #[test]
    fn each_kind_of_credential_is_read_with_its_settings() {
        let c = Config::from_toml_str(
            r#"
[credentials.aws-release]
kind = "aws"
endpoint = "https://sts.amazonaws.com/"
audience = "sts.amazonaws.com"
role_arn = "arn:aws:iam::123456789012:role/release"
[credentials.gcp]
kind = "oauth-token-exchange"
endpoint = "https://sts.googleapis.com/v1/token"
audience = "//iam.googleapis.com/x"
scope = "https://www.googleapis.com/auth/cloud-platform"
[credentials.vault]
kind = "vault"
endpoint = "https://vault.example.com"
audience = "vault"
role = "release"
"#,
        )
        .unwrap();
        assert_eq!(c.credentials.len(), 3);
        assert_eq!(c.credentials["aws-release"].kind.as_str(), "aws");
        assert_eq!(
            c.credentials["vault"].kind,
            super::CredentialKind::Vault {
                role: "release".into(),
                mount: "jwt".into()
            }
        );
    }

    #[test]
    fn a_misconfigured_credential_is_refused_naming_the_key() {
        let e =
            errors("[credentials.a]\nkind = \"aws\"\nendpoint = \"https://x\"\naudience = \"a\"\n");
        assert!(e.contains("credentials.a.role_arn: missing"), "{e}");
        let e =
            errors("[credentials.a]\nkind = \"gcp\"\nendpoint = \"https://x\"\naudience = \"a\"\n");
        assert!(
            e.contains("credentials.a.kind: \"gcp\" is not a credential kind"),
            "{e}"
        );
        let e = errors("[credentials.a]\nkind = \"vault\"\nendpoint = \"ftp://x\"\naudience = \"a\"\nrole = \"r\"\n");
        assert!(
            e.contains("credentials.a.endpoint: scheme \"ftp\" is not https"),
            "{e}"
        );
        let e = errors("[credentials.a]\nkind = \"vault\"\nendpoint = \"https://v/?ns=x\"\naudience = \"a\"\nrole = \"r\"\n");
        assert!(
            e.contains("credentials.a.endpoint: must not have a query"),
            "{e}"
        );
        let e = errors("[credentials.a]\nkind = \"vault\"\nendpoint = \"https://x\"\naudience = \"a\"\nrole = \"r\"\nmount = \"../sys\"\n");
        assert!(e.contains("credentials.a.mount"), "{e}");
        let e = errors("[credentials.a]\nkind = \"vault\"\nendpoint = \"https://x\"\naudience = \"a\"\nrole = \"r\"\nrole_arn = \"arn:x\"\n");
        assert!(
            e.contains("credentials.a.role_arn: is not a setting of kind \"vault\""),
            "{e}"
        );
        let e = errors("[credentials.Bad]\nkind = \"vault\"\nendpoint = \"https://x\"\naudience = \"a\"\nrole = \"r\"\n");
        assert!(e.contains("credentials.Bad: must match"), "{e}");
        let e = errors("[credentials.a]\nkind = \"aws\"\nendpoint = \"https://u:p@x\"\naudience = \"a\"\nrole_arn = \"arn:x\"\n");
        assert!(
            e.contains("must not contain credentials") && !e.contains("u:p"),
            "{e}"
        );
        let e = errors("[credentials.a]\nkind = \"aws\"\nendpoint = \"https://x\"\naudience = \"a\"\nrole_arn = \"arn:x\"\npassword = \"p\"\n");
        assert!(e.contains("unknown field"), "{e}");
    }
}
