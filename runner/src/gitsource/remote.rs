//! Where a git source may come from: the URL rules (scheme, no credentials, normalized
//! serialization), the address rules for `https`/`http` hosts (resolved by the runner, every
//! address checked, git pinned to exactly those addresses), and `file://` roots.

use super::*;

/// A repository location that passed the rules, and what git is to be told.
#[derive(Debug)]
pub(super) struct Remote {
    /// The URL as given, for messages.
    pub(super) display: String,
    /// What git receives: the normalized URL, or the canonical path for `file://`.
    pub(super) git_arg: String,
    /// `https`, `http` or `file`.
    pub(super) scheme: &'static str,
    /// `host:port:addr[,addr]` for `http.curloptResolve`, when the host is a name.
    pub(super) pin: Option<String>,
    /// The TCP port git connects to; `None` for `file://`, which needs no network.
    pub(super) port: Option<u16>,
}

impl Remote {
    pub(super) fn check(url: &str, policy: &GitPolicy) -> Result<Remote, GitError> {
        let bad = || GitError::BadUrl {
            url: url.to_owned(),
        };
        // First, so that no other refusal (a bad port, a space, an unknown scheme) shows the
        // URL with a credential in it; parsed below too, for what a URL parser finds.
        if has_user_info(url) {
            return Err(GitError::Credentials);
        }
        if url.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        if url.starts_with('/') {
            return Remote::local(url, Path::new(url), policy);
        }
        let parsed = match Url::parse(url) {
            Ok(parsed) => parsed,
            // `ext::cmd`, scp-like `host:path` and other non-URLs end here or below.
            Err(_) => match url.split_once("::").or_else(|| url.split_once(':')) {
                Some((scheme, _))
                    if !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric()) =>
                {
                    return Err(GitError::Scheme {
                        url: url.to_owned(),
                        scheme: scheme.to_owned(),
                    })
                }
                _ => return Err(bad()),
            },
        };
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(GitError::Credentials);
        }
        let scheme = match parsed.scheme() {
            "https" => "https",
            "http" => "http",
            "file" => {
                let path = parsed.to_file_path().map_err(|()| bad())?;
                return Remote::local(url, &path, policy);
            }
            other => {
                return Err(GitError::Scheme {
                    url: url.to_owned(),
                    scheme: other.to_owned(),
                })
            }
        };
        let port = parsed.port_or_known_default().ok_or_else(bad)?;
        let addresses = AddressPolicy {
            allow_private: policy.allow_private.clone(),
            host: crate::egress::policy::host_addresses(&policy.host_addresses).map_err(
                |reason| GitError::HostAddresses {
                    url: url.to_owned(),
                    reason,
                },
            )?,
        };
        // The `url` crate has already normalized the host (IPv4 shorthand, case, IDNA).
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(bad)?;
        let literal = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => Some(v6.parse::<IpAddr>().map_err(|_| bad())?),
            None => host.parse::<IpAddr>().ok(),
        };
        if literal.is_none() && !pinnable_host(host) {
            return Err(GitError::HostName {
                url: url.to_owned(),
                host: host.to_owned(),
            });
        }
        let (addrs, pin_host) = match literal {
            Some(ip) => (vec![ip], None),
            None => {
                let resolve_error = |source| GitError::Resolve {
                    url: url.to_owned(),
                    host: host.to_owned(),
                    source,
                };
                let resolved: Vec<IpAddr> = (host, port)
                    .to_socket_addrs()
                    .map_err(resolve_error)?
                    .map(|a: SocketAddr| a.ip())
                    .collect();
                if resolved.is_empty() {
                    return Err(resolve_error(io::Error::new(
                        io::ErrorKind::NotFound,
                        "no addresses",
                    )));
                }
                (resolved, Some(host.to_owned()))
            }
        };
        for addr in &addrs {
            addresses.check(*addr).map_err(|source| GitError::Address {
                url: url.to_owned(),
                source,
            })?;
        }
        let pin = pin_host.map(|host| {
            let list: Vec<String> = addrs
                .iter()
                .map(|a| match a {
                    IpAddr::V4(v4) => v4.to_string(),
                    IpAddr::V6(v6) => format!("[{v6}]"),
                })
                .collect();
            format!("{host}:{port}:{}", list.join(","))
        });
        Ok(Remote {
            display: url.to_owned(),
            git_arg: parsed.as_str().to_owned(),
            scheme,
            pin,
            port: Some(port),
        })
    }

    fn local(url: &str, path: &Path, policy: &GitPolicy) -> Result<Remote, GitError> {
        let outside = |path: &Path| GitError::FileOutsideRoots {
            url: url.to_owned(),
            path: path.to_owned(),
            empty: policy.file_roots.is_empty(),
        };
        if policy.file_roots.is_empty() {
            return Err(outside(path));
        }
        let canonical = path.canonicalize().map_err(|source| GitError::File {
            url: url.to_owned(),
            path: path.to_owned(),
            source,
        })?;
        let inside = policy
            .file_roots
            .iter()
            .filter_map(|root| root.canonicalize().ok())
            .any(|root| canonical.starts_with(root));
        if !inside {
            return Err(outside(&canonical));
        }
        // The exact repository git reads: `P/.git` when that is a directory of its own, else
        // `P` itself when it is a bare repository. Given `P`, git's `upload-pack` would guess
        // (`P/.git`, `P`, `P.git/.git`, `P.git`), and `P.git` is a sibling that was never
        // checked against the roots; it runs with `--strict` (see `fetch`), so it reads the
        // directory named here and no other. A `.git` that is not a directory (a gitfile or a
        // symlink, which can name a repository anywhere) is refused.
        let not_repository = |path: &Path, why: &'static str| GitError::NotRepository {
            url: url.to_owned(),
            path: path.to_owned(),
            why,
        };
        let dot_git = canonical.join(".git");
        let git_dir = match fs::symlink_metadata(&dot_git) {
            Ok(m) if m.is_dir() => dot_git,
            Ok(_) => {
                return Err(not_repository(
                    &dot_git,
                    "is not a directory (a gitfile or symlink naming a repository elsewhere is refused)",
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let is = |name: &str, dir: bool| {
                    fs::symlink_metadata(canonical.join(name))
                        .is_ok_and(|m| if dir { m.is_dir() } else { m.is_file() })
                };
                if !(is("HEAD", false) && is("objects", true) && is("refs", true)) {
                    return Err(not_repository(
                        &canonical,
                        "is neither a bare repository nor a directory with a .git directory",
                    ));
                }
                canonical
            }
            Err(source) => {
                return Err(GitError::File {
                    url: url.to_owned(),
                    path: dot_git,
                    source,
                })
            }
        };
        let git_arg = git_dir
            .to_str()
            .ok_or_else(|| GitError::BadUrl {
                url: url.to_owned(),
            })?
            .to_owned();
        Ok(Remote {
            display: url.to_owned(),
            git_arg,
            scheme: "file",
            pin: None,
            port: None,
        })
    }
}

/// Whether git can be pinned to the checked addresses of `host` (a name, not an address): the
/// pin is a libcurl resolve entry, `host:port:addresses`, and libcurl reads an entry that starts
/// with `-` as "forget this name" and one that starts with `+` as another kind of entry, after
/// which curl would resolve the name itself, perhaps to an address never checked (DNS
/// rebinding). Host names are letters, digits, `-` and `_` in dot-separated labels (the `url`
/// crate has lowered the case and turned international names into `xn--` labels), none of
/// which starts with `-`.
pub(super) fn pinnable_host(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
}

/// Whether the text has a user name (and maybe a password) before its host, whether it parses
/// as a URL or not: `scheme://user:password@host/...` or scp-like `user@host:path`.
fn has_user_info(url: &str) -> bool {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    after_scheme
        .split(['/', '\\', '?', '#'])
        .next()
        .is_some_and(|authority| authority.contains('@'))
}
