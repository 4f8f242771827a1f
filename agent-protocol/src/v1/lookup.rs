//! What an inventory question matches in one provenance statement: the host's index (`bulwark
//! inventory query`) and the coordinator's (`bulwark-coordinator inventory query`) ask the same
//! questions of the same statements, so they share the answer's rules here (no I/O).
//!
//! The rules: `commit` is a git source's (a dependency with a `gitCommit` digest starting with
//! it) and holds on its own dependency, whatever else is asked (built from this commit with
//! this jq). `uri`, `name` and `digest` describe one dependency together (jq, from there, with
//! this digest), or the digest is the artifact's own and the other two hold on some
//! dependency (this artifact, if it was built with a tool from there).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A dependency as provenance names it (a resolved dependency, or one of the builder's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    /// `name` (`source`, `rootfs`, a tool's name, `bulwark`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Algorithm to value, lowercase (`sha256`, `gitCommit`).
    pub digest: BTreeMap<String, String>,
    /// One of the builder's binaries rather than an input of the build.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub builder: bool,
}

/// A uri as an inventory question gives it: exact, or ending in `*`, a prefix of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriPattern<'a> {
    /// This uri exactly.
    Exact(&'a str),
    /// Every uri starting with this (the question without its final `*`).
    Prefix(&'a str),
}

impl<'a> UriPattern<'a> {
    /// Reads `q`: a final `*` makes it a prefix.
    pub fn parse(q: &'a str) -> UriPattern<'a> {
        match q.strip_suffix('*') {
            Some(prefix) => UriPattern::Prefix(prefix),
            None => UriPattern::Exact(q),
        }
    }

    /// The uri, or the prefix, without the `*`.
    pub fn text(self) -> &'a str {
        match self {
            UriPattern::Exact(u) | UriPattern::Prefix(u) => u,
        }
    }

    /// Whether `uri` is this one, or starts with this prefix.
    pub fn matches(self, uri: &str) -> bool {
        match self {
            UriPattern::Exact(u) => uri == u,
            UriPattern::Prefix(p) => uri.starts_with(p),
        }
    }
}

/// An inventory question, already checked and lowercased by the asker.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lookup<'a> {
    /// A git commit or a prefix of one.
    pub commit: Option<&'a str>,
    /// A dependency's uri; ending in `*`, a prefix of one.
    pub uri: Option<&'a str>,
    /// A dependency's name.
    pub name: Option<&'a str>,
    /// A digest value: a dependency's, or the artifact's own.
    pub digest: Option<&'a str>,
}

impl Lookup<'_> {
    /// `uri`, `name` and (unless `with_digest` is false) `digest` hold on `d`.
    fn describes(&self, d: &Dependency, with_digest: bool) -> bool {
        let uri_ok = match (self.uri, d.uri.as_deref()) {
            (None, _) => true,
            (Some(q), Some(u)) => UriPattern::parse(q).matches(u),
            (Some(_), None) => false,
        };
        let name_ok = self.name.is_none() || self.name == d.name.as_deref();
        let digest_ok = !with_digest
            || self
                .digest
                .is_none_or(|q| d.digest.values().any(|v| v == q));
        uri_ok && name_ok && digest_ok
    }

    /// For each of a statement's artifacts (by sha256, in order), whether it matches and the
    /// dependencies that made it match (empty when the digest is the artifact's own and
    /// nothing else was asked).
    pub fn matches<'s>(
        &self,
        dependencies: &[Dependency],
        subjects: impl IntoIterator<Item = &'s str>,
    ) -> Vec<Option<Vec<Dependency>>> {
        let subjects: Vec<&str> = subjects.into_iter().collect();
        let by_commit: Vec<&Dependency> = match self.commit {
            None => Vec::new(),
            Some(c) => {
                let found: Vec<&Dependency> = dependencies
                    .iter()
                    .filter(|d| d.digest.get("gitCommit").is_some_and(|v| v.starts_with(c)))
                    .collect();
                if found.is_empty() {
                    return vec![None; subjects.len()];
                }
                found
            }
        };
        let pick = |with_digest: bool| -> Vec<&Dependency> {
            dependencies
                .iter()
                .filter(|d| self.describes(d, with_digest))
                .collect()
        };
        let describes = self.uri.is_some() || self.name.is_some() || self.digest.is_some();
        let by_dependency = if describes { pick(true) } else { Vec::new() };
        // For an artifact's own digest: the other filters, on some dependency.
        let others_hold = self.uri.is_none() && self.name.is_none();
        let by_others = if self.digest.is_some() && by_dependency.is_empty() && !others_hold {
            pick(false)
        } else {
            Vec::new()
        };
        subjects
            .iter()
            .map(|sha256| {
                let extra: &[&Dependency] = if !describes || !by_dependency.is_empty() {
                    &by_dependency
                } else if self.digest == Some(*sha256) && (others_hold || !by_others.is_empty()) {
                    &by_others
                } else {
                    return None;
                };
                let mut all: Vec<Dependency> = Vec::new();
                for d in by_commit.iter().chain(extra) {
                    if !all.contains(d) {
                        all.push((*d).clone());
                    }
                }
                Some(all)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(name: &str, uri: &str, alg: &str, value: &str) -> Dependency {
        Dependency {
            name: Some(name.into()),
            uri: Some(uri.into()),
            digest: [(alg.to_owned(), value.to_owned())].into(),
            builder: false,
        }
    }

    #[test]
    fn a_commit_holds_on_its_own_and_the_rest_describe_one_dependency() {
        let deps = [
            dep(
                "source",
                "git+https://git.example/app.git",
                "gitCommit",
                "0123abcd",
            ),
            dep("jq", "https://tools.example/jq.tgz", "sha256", "11"),
        ];
        let names = |l: Lookup<'_>, own: &str| -> Option<Vec<String>> {
            l.matches(&deps, [own])
                .remove(0)
                .map(|m| m.into_iter().map(|d| d.name.unwrap_or_default()).collect())
        };
        let l = |commit, uri, name, digest| Lookup {
            commit,
            uri,
            name,
            digest,
        };
        assert_eq!(
            names(l(Some("0123"), None, None, None), "aa"),
            Some(vec!["source".into()])
        );
        assert_eq!(names(l(Some("9"), None, None, None), "aa"), None);
        assert_eq!(
            names(l(Some("0123"), None, None, Some("11")), "aa"),
            Some(vec!["source".into(), "jq".into()])
        );
        // The tool's digest with the source's uri: no one dependency is both.
        assert_eq!(
            names(l(None, Some("git+https://*"), None, Some("11")), "aa"),
            None
        );
        // Unless the digest is the artifact's own: then the uri's dependency is named.
        assert_eq!(
            names(l(None, Some("git+https://*"), None, Some("aa")), "aa"),
            Some(vec!["source".into()])
        );
        assert_eq!(names(l(None, None, None, Some("aa")), "aa"), Some(vec![]));
        assert_eq!(
            names(l(None, None, Some("jq"), None), "aa"),
            Some(vec!["jq".into()])
        );
        assert_eq!(
            names(l(None, Some("https://tools.example/jq"), None, None), "aa"),
            None
        );
    }
}
