//! Credentials for trusted jobs: the job's identity token exchanged for short-lived cloud
//! credentials, handed to the job as files, masked in its log (docs/credentials.md).
//!
//! Who does what, and why there:
//!
//! - `bulwark daemon` holds the lease, so only it can ask the coordinator for the job's
//!   identity token; it makes the first exchange ([`exchange`]) *before* the run starts, so a
//!   refusal by the cloud refuses the job before any step, and the run never sees a token
//!   (renewals while the job runs are made by the daemon too, below).
//! - It hands the issued credentials to its `bulwark run` child on the child's standard input
//!   ([`Handoff`]): a pipe, in memory. Never a file (the state directory is on disk and
//!   outlives the job), never an argument or environment variable (readable in `/proc` by
//!   other processes of the runner's user).
//! - The run passes them to the sandbox helper in the sandbox spec (the same kind of pipe),
//!   and the sandbox's init writes them on a tmpfs of the sandbox's own at
//!   `/run/credentials/<name>/`, read-only, gone with the job's mount namespace.
//! - The run masks every secret value in the job's log ([`mask::Masker`]).
//! - Before they expire, the daemon exchanges a fresh identity token again and sends the
//!   newer credentials down the same path, one [`Handoff`] line per refresh on the run's
//!   standard input ([`Updates`]); the run masks them first, then passes them to init, which
//!   replaces the files in place (`bulwark_sandbox::credential_updates`).
//!
//! The exchanges obey the runner's fetch address rules (`[fetch]`: no private or metadata
//! address unless allowed) and follow no redirect, since a redirect would carry the token
//! elsewhere. Error messages say which credential and what the service answered, with any
//! token or secret in that answer masked.

pub mod exchange;
pub mod mask;

use serde::{Deserialize, Serialize};

pub use exchange::exchange;

/// A secret string: `Debug` never shows it, and its memory is zeroed when it is dropped.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(s: String) -> Secret {
        Secret(s)
    }

    /// The value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes redacted>", self.0.len())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// One issued credential, as the job will see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issued {
    /// The configured name (`/run/credentials/<name>/`).
    pub name: String,
    /// The kind (`aws`, `oauth-token-exchange`, `vault`).
    pub kind: String,
    /// When it expires (RFC 3339), as the service said.
    pub expires: Option<String>,
    /// File name and contents, in `/run/credentials/<name>/`. On the wire as hex ([`hex`]).
    #[serde(with = "hex::files")]
    pub files: Vec<(String, Secret)>,
    /// Every value to mask in the job's log. On the wire as hex ([`hex`]).
    #[serde(with = "hex::values")]
    pub secrets: Vec<Secret>,
}

/// [`Issued`]'s values as lowercase hex in the handoff (`bulwark_sandbox::spec::secret_hex`),
/// for the reason the sandbox spec carries them so: a JSON string with an escape (a
/// credential file's newline) is parsed through a scratch buffer of the parser's that is
/// freed without being zeroed, in the run, and written through one in the daemon.
mod hex {
    use bulwark_sandbox::spec::secret_hex;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Secret;

    /// A secret on its way out, as hex.
    struct Out<'a>(&'a Secret);

    impl Serialize for Out<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            secret_hex::serialize(self.0.expose(), s)
        }
    }

    /// A secret on its way in, from hex.
    struct In(Secret);

    impl<'de> Deserialize<'de> for In {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<In, D::Error> {
            secret_hex::deserialize(d).map(|text| In(Secret::new(text)))
        }
    }

    pub mod files {
        use super::*;

        pub fn serialize<S: Serializer>(v: &[(String, Secret)], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(|(name, value)| (name, Out(value))))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<(String, Secret)>, D::Error> {
            let v: Vec<(String, In)> = Vec::deserialize(d)?;
            Ok(v.into_iter()
                .map(|(name, In(value))| (name, value))
                .collect())
        }
    }

    pub mod values {
        use super::*;

        pub fn serialize<S: Serializer>(v: &[Secret], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(Out))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
            let v: Vec<In> = Vec::deserialize(d)?;
            Ok(v.into_iter().map(|In(value)| value).collect())
        }
    }
}

/// What `bulwark daemon` writes to its `bulwark run` child's standard input: one line with
/// the job's credentials before it starts, then one per refresh while it runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handoff {
    /// The job's credentials: the first line holds one per name in its spec; a refresh, the
    /// ones it renewed.
    pub credentials: Vec<Issued>,
    /// A refresh: the credentials that could not be renewed this time, and why (the job
    /// keeps what it has; the daemon tries again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<RefreshFailure>,
}

/// A credential the daemon could not renew, and why (no token or secret in the reason: the
/// exchange's errors mask them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshFailure {
    /// The credential's name.
    pub name: String,
    /// What went wrong.
    pub reason: String,
}

/// Most bytes of one [`Handoff`] line on standard input: eight AWS credentials of three
/// values each as long as [`exchange`] takes (16 KiB), each value three times (two files and
/// the masks), as hex: about 2.3 MiB.
pub const MAX_HANDOFF_BYTES: usize = 3 << 20;

impl Handoff {
    /// The names of the credentials it holds.
    fn names(&self) -> Vec<&str> {
        self.credentials.iter().map(|c| c.name.as_str()).collect()
    }

    /// The handoff as one line for the run's standard input, in a buffer that zeroes what
    /// it leaves behind.
    pub fn to_line(&self) -> Result<bulwark_sandbox::secret_buf::SecretBuf, String> {
        bulwark_sandbox::secret_buf::SecretBuf::json_line(self)
            .map_err(|e| format!("encoding the credentials: {e}"))
    }
}

fn parse_handoff(line: &bulwark_sandbox::secret_buf::SecretBuf) -> Result<Handoff, String> {
    // Not serde's message: it may quote a value of the line, which holds secrets.
    serde_json::from_slice(line.as_bytes()).map_err(|e| {
        format!(
            "the credentials on standard input are not a handoff ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        )
    })
}

/// The rest of the run's standard input once the first handoff is read: newer credentials
/// `bulwark daemon` sends while the job runs (a [`Handoff`] per line, each holding the
/// credentials it refreshed). Lines are read into buffers that zero what they leave.
#[derive(Debug)]
pub struct Updates {
    lines: bulwark_sandbox::secret_buf::SecretLines,
    /// Lines that came with the first handoff.
    queued: Vec<bulwark_sandbox::secret_buf::SecretBuf>,
    open: bool,
}

impl Updates {
    /// Whether standard input is still open: poll it for `POLLIN` while it is.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Returns the handoffs that came with the first and, when standard input was reported
    /// `readable`, those that what it has now completes (it is read only then: a read of it
    /// blocks until the daemon's next refresh), each parsed on its own (a line that does not
    /// parse is an error in its place). The end of the input closes it (the daemon sends no
    /// more); a read that fails or an overlong line closes it, an error in the list.
    pub fn read(&mut self, readable: bool) -> Vec<Result<Handoff, String>> {
        let mut lines = std::mem::take(&mut self.queued);
        let mut failed = None;
        if self.open && readable {
            let stdin = std::io::stdin();
            match self.lines.read_from(std::os::fd::AsFd::as_fd(&stdin)) {
                Ok(Some(more)) => lines.extend(more),
                Ok(None) => self.open = false,
                Err(e) => {
                    self.open = false;
                    failed = Some(format!(
                        "reading credential updates from standard input: {e}"
                    ));
                }
            }
        }
        let mut out: Vec<Result<Handoff, String>> = lines.iter().map(parse_handoff).collect();
        out.extend(failed.map(Err));
        out
    }

    /// No more updates: standard input is replaced with `/dev/null`, so that the daemon's end
    /// of the pipe reports an error and it starts no further exchange.
    pub fn close(&mut self) {
        self.open = false;
        self.queued.clear();
        if let Ok(null) = std::fs::File::open("/dev/null") {
            let _ = nix::unistd::dup2_stdin(null);
        }
    }

    /// Whether updates that came with the first handoff wait to be read.
    pub fn has_queued(&self) -> bool {
        !self.queued.is_empty()
    }
}

/// What `bulwark run --credentials-stdin` does first: makes this process non-dumpable (see
/// [`keep_out_of_dumps`]), then reads the first handoff, the first line of standard input.
/// Standard input stays open for newer credentials ([`Updates`]).
pub fn receive_handoff() -> Result<(Handoff, Updates), String> {
    keep_out_of_dumps()?;
    let mut lines = bulwark_sandbox::secret_buf::SecretLines::new(MAX_HANDOFF_BYTES);
    let mut first = lines
        .read_line(std::os::fd::AsFd::as_fd(&std::io::stdin()))
        .map_err(|e| format!("reading the credentials from standard input: {e}"))?
        .ok_or("no credentials on standard input")?;
    let handoff = parse_handoff(&first.remove(0))?;
    Ok((
        handoff,
        Updates {
            lines,
            queued: first,
            open: true,
        },
    ))
}

/// Makes this process non-dumpable before it holds a credential: no core dump of it (which
/// systemd-coredump keeps on the host's disk), and no `ptrace` or `/proc/<pid>/mem` for other
/// processes of the runner's user. Children start dumpable again when they exec.
pub fn keep_out_of_dumps() -> Result<(), String> {
    nix::sys::prctl::set_dumpable(false)
        .map_err(|e| format!("making this process non-dumpable before it holds credentials: {e}"))
}

/// One secret value of a credential: masked in the job's log, refused in a saved cache.
#[derive(Debug, Clone)]
pub struct Mask {
    /// The credential's name (`/run/credentials/<name>/`): what a refusal may say.
    pub credential: String,
    /// The value (`Debug` redacts it).
    pub value: Secret,
}

impl Mask {
    /// The value, for the masker and the cache's finder.
    pub fn expose(&self) -> &str {
        self.value.expose()
    }
}

/// A handoff split for its three readers.
#[derive(Debug, Default)]
pub struct Prepared {
    /// The files the sandbox helper writes under `/run/credentials`.
    pub files: Vec<bulwark_sandbox::spec::CredentialFile>,
    /// The values the job's log masks (and a saved cache must not hold), each with the
    /// credential's name.
    pub masks: Vec<Mask>,
    /// What `result.json` records.
    pub records: Vec<bulwark_protocol::CredentialRecord>,
}

/// Checks that `handoff` holds exactly the credentials `wanted` (the spec's list), each with
/// plain file names, and turns it into the sandbox's files and the log's masks.
pub fn into_sandbox(wanted: &[String], handoff: Handoff) -> Result<Prepared, String> {
    let names = handoff.names();
    if names.len() != wanted.len() || wanted.iter().any(|w| !names.contains(&w.as_str())) {
        return Err(format!(
            "credentials: the spec asks for {wanted:?}, the handoff holds {names:?}"
        ));
    }
    split(handoff)
}

/// Checks that a handoff of newer credentials holds some of `wanted` (the spec's list), each
/// once, and turns it into the files that replace the job's and the values to mask.
pub fn into_update(wanted: &[String], handoff: Handoff) -> Result<Prepared, String> {
    let names = handoff.names();
    let unknown = names.iter().find(|n| !wanted.iter().any(|w| w == *n));
    let twice = names
        .iter()
        .enumerate()
        .find(|(i, n)| names[..*i].contains(n))
        .map(|(_, n)| n);
    let problem = match (names.is_empty(), unknown, twice) {
        (true, _, _) => Some("holds no credential".to_owned()),
        (_, Some(n), _) => Some(format!("holds {n:?}, which the spec does not ask for")),
        (_, _, Some(n)) => Some(format!("holds {n:?} twice")),
        _ => None,
    };
    if let Some(problem) = problem {
        return Err(format!(
            "credential update: {problem} (the spec asks for {wanted:?})"
        ));
    }
    split(handoff)
}

fn split(handoff: Handoff) -> Result<Prepared, String> {
    let mut files = Vec::new();
    let mut masks = Vec::new();
    for c in &handoff.credentials {
        for (name, contents) in &c.files {
            if bulwark_protocol::check_name(name).is_err() {
                return Err(format!(
                    "credentials.{}: file name {name:?} is not plain",
                    c.name
                ));
            }
            files.push(bulwark_sandbox::spec::CredentialFile {
                dir: c.name.clone(),
                name: name.clone(),
                contents: contents.expose().to_string(),
            });
        }
        masks.extend(c.secrets.iter().map(|value| Mask {
            credential: c.name.clone(),
            value: value.clone(),
        }));
    }
    let records = handoff
        .credentials
        .iter()
        .map(|c| bulwark_protocol::CredentialRecord {
            name: c.name.clone(),
            kind: c.kind.clone(),
            expires: c.expires.clone(),
            refreshed: 0,
            refresh_failed: None,
        })
        .collect();
    Ok(Prepared {
        files,
        masks,
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_shows_in_debug_output() {
        let s = Secret::new("hunter2-session".into());
        assert_eq!(format!("{s:?}"), "<15 bytes redacted>");
        let i = Issued {
            name: "aws".into(),
            kind: "aws".into(),
            expires: None,
            files: vec![("credentials".into(), s.clone())],
            secrets: vec![s],
        };
        assert!(!format!("{i:?}").contains("hunter2"));
    }

    #[test]
    fn a_handoff_carries_values_as_hex_with_no_escape_and_reads_them_back() {
        let value = Secret::new("[default]\naws_secret_access_key = s/e+c\n".into());
        let handoff = Handoff {
            credentials: vec![Issued {
                name: "aws".into(),
                kind: "aws".into(),
                expires: None,
                files: vec![("credentials".into(), value.clone())],
                secrets: vec![value.clone()],
            }],
            failed: Vec::new(),
        };
        let wire = serde_json::to_string(&handoff).unwrap();
        assert!(
            !wire.contains('\\') && !wire.contains("aws_secret"),
            "{wire}"
        );
        assert!(wire.contains("5b64656661756c745d0a"), "{wire}");
        let back: Handoff = serde_json::from_str(&wire).unwrap();
        assert_eq!(back.credentials[0].files[0].1, value);
        assert_eq!(back.credentials[0].secrets, vec![value]);
    }

    const CHILD_TEST: &str = "creds::tests::child_receives_a_handoff";
    const CHILD_ENV: &str = "BULWARK_TEST_CREDS_CHILD";

    /// The child half of the test below: run only when it starts this binary.
    #[test]
    fn child_receives_a_handoff() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        let h = receive_handoff().expect("handoff");
        assert_eq!(h.0.credentials.len(), 1);
        assert!(
            !nix::sys::prctl::get_dumpable().expect("get_dumpable"),
            "a process holding credentials must not be dumpable"
        );
    }

    #[test]
    fn a_run_that_receives_credentials_is_not_dumpable() {
        use std::io::Write;
        let token = Secret::new("hvs.secret-token-value".into());
        let handoff = serde_json::to_string(&Handoff {
            credentials: vec![Issued {
                name: "vault".into(),
                kind: "vault".into(),
                expires: None,
                files: vec![("token".into(), token.clone())],
                secrets: vec![token],
            }],
            failed: Vec::new(),
        })
        .expect("encode");
        let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(handoff.as_bytes()).expect("write");
        drop(stdin);
        let out = child.wait_with_output().expect("wait");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn a_handoff_must_hold_exactly_what_the_spec_asks_for() {
        let one = |name: &str, file: &str| Issued {
            name: name.into(),
            kind: "vault".into(),
            expires: None,
            files: vec![(file.into(), Secret::new("tok".into()))],
            secrets: vec![Secret::new("tok".into())],
        };
        let wanted = vec!["vault".to_string()];
        let ok = into_sandbox(
            &wanted,
            Handoff {
                credentials: vec![one("vault", "token")],
                failed: Vec::new(),
            },
        );
        let p = ok.unwrap();
        assert_eq!(p.files.len(), 1);
        assert_eq!(p.masks.len(), 1);
        assert_eq!(p.records[0].name, "vault");
        assert!(into_sandbox(
            &wanted,
            Handoff {
                credentials: vec![one("other", "token")],
                failed: Vec::new(),
            }
        )
        .is_err());
        assert!(into_sandbox(&wanted, Handoff::default()).is_err());
        let e = into_sandbox(
            &wanted,
            Handoff {
                credentials: vec![one("vault", "../x")],
                failed: Vec::new(),
            },
        )
        .unwrap_err();
        assert!(e.contains("not plain"), "{e}");
    }

    #[test]
    fn an_update_holds_some_of_the_job_s_credentials_each_once() {
        let one = |name: &str| Issued {
            name: name.into(),
            kind: "aws".into(),
            expires: Some("2030-01-01T00:00:00Z".into()),
            files: vec![("credentials".into(), Secret::new("new-value".into()))],
            secrets: vec![Secret::new("new-value".into())],
        };
        let wanted = vec!["aws".to_string(), "gcp".to_string()];
        let update = |names: &[&str]| {
            into_update(
                &wanted,
                Handoff {
                    credentials: names.iter().map(|n| one(n)).collect(),
                    failed: Vec::new(),
                },
            )
        };
        let p = update(&["aws"]).unwrap();
        assert_eq!(p.files.len(), 1);
        assert_eq!(
            p.records[0].expires.as_deref(),
            Some("2030-01-01T00:00:00Z")
        );
        for (bad, says) in [
            (&[][..], "holds no credential"),
            (
                &["other"],
                "holds \"other\", which the spec does not ask for",
            ),
            (&["aws", "aws"], "holds \"aws\" twice"),
        ] {
            let e = update(bad).unwrap_err();
            assert!(
                e.starts_with(&format!("credential update: {says} (the spec asks for")),
                "{e}"
            );
        }
    }

    #[test]
    fn the_first_handoff_is_one_line_and_what_follows_it_is_kept_for_later() {
        let first = Handoff {
            credentials: vec![Issued {
                name: "vault".into(),
                kind: "vault".into(),
                expires: None,
                files: vec![("token".into(), Secret::new("hvs.one".into()))],
                secrets: vec![],
            }],
            failed: Vec::new(),
        };
        let line = first.to_line().unwrap();
        assert!(line.as_bytes().ends_with(b"\n"));
        assert_eq!(line.as_bytes().iter().filter(|b| **b == b'\n').count(), 1);
        let mut lines = bulwark_sandbox::secret_buf::SecretLines::new(MAX_HANDOFF_BYTES);
        let two = [line.as_bytes(), line.as_bytes()].concat();
        let got = lines.take(&two).unwrap();
        assert_eq!(got.len(), 2);
        let back = parse_handoff(&got[1]).unwrap();
        assert_eq!(back.credentials[0].files[0].1.expose(), "hvs.one");
    }
}
