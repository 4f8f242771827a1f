//! Deterministic mutation testing of the parsers: thousands of corrupted versions of valid
//! documents go through parsing and validation. Nothing may panic, every error must be
//! printable safely (bounded lines, no control characters), and anything that validates must
//! still respect the operator's ceilings. The generator is a fixed-seed xorshift so a failure
//! reproduces exactly; no fuzzing crate is needed for this.

use std::fs;
use std::path::Path;

use bulwark_protocol::job::PROXY_ENV_VARS;
use bulwark_protocol::{is_reserved_output, Config, JobSpec, LimitsConfig, SpecError};

const ITERATIONS: usize = 4000;

/// Fragments that tend to reach interesting parser and validator paths.
const TOKENS: &[&str] = &[
    "\"",
    "'",
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    "=",
    ",",
    "\n",
    ".",
    "..",
    "/",
    "*",
    "**",
    ":",
    "-",
    "0",
    "1",
    "-1",
    "9999999999999999999999",
    "99999999999TiB",
    "0s",
    "1h30m",
    "4GB",
    "\\u0000",
    "\\u001b",
    "\u{1f600}",
    "\u{0}",
    "\r\n",
    "#",
    "version = 2",
    "[network]",
    "allow = [\"x:0\"]",
    "HTTPS_PROXY",
    "result.json",
    "[[steps]]\nname = \"build\"\nrun = \"x\"\n",
    "true",
    "inf",
    "nan",
    "1979-05-27T07:32:00Z",
    "\"\"\"",
    "'''",
];

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(rng: &mut XorShift, input: &str) -> String {
    let mut bytes = input.as_bytes().to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(6) {
            0 if at < bytes.len() => bytes[at] ^= 1 << rng.below(8),
            1 => {
                let end = (at + rng.below(16)).min(bytes.len());
                bytes.drain(at..end);
            }
            2 => {
                let token = TOKENS[rng.below(TOKENS.len())].as_bytes();
                bytes.splice(at..at, token.iter().copied());
            }
            3 => {
                let end = (at + rng.below(64)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                let to = rng.below(bytes.len() + 1);
                bytes.splice(to..to, copy);
            }
            4 if at < bytes.len() => bytes[at] = b"\"=[]\n.*0 "[rng.below(9)],
            _ => {
                let long = "x".repeat(rng.below(5000));
                bytes.splice(at..at, long.bytes());
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// An error message must be safe to print: no control characters but the newlines between
/// field errors, and no line longer than a terminal can reasonably show.
fn assert_printable(err: &SpecError, input: &str) {
    let text = err.to_string();
    assert!(!text.is_empty(), "empty error for {input:?}");
    for line in text.lines() {
        assert!(
            line.chars().count() <= 500,
            "line too long ({}) for {input:?}",
            line.len()
        );
        assert!(
            !line.chars().any(char::is_control),
            "control character in {line:?}"
        );
    }
}

fn check_job(text: &str, limits: &LimitsConfig) -> bool {
    let spec = match JobSpec::from_toml_str(text) {
        Ok(spec) => spec,
        Err(err) => {
            assert_printable(&err, text);
            return false;
        }
    };
    match spec.validate(limits) {
        Ok(job) => {
            assert!(
                job.timeout <= limits.max_timeout && !job.timeout.is_zero(),
                "{text:?}"
            );
            assert!(
                job.memory <= limits.max_memory && job.pids <= limits.max_pids,
                "{text:?}"
            );
            assert!(!job.steps.is_empty() && job.steps.len() <= 64, "{text:?}");
            for step in &job.steps {
                assert!(step.timeout.is_none_or(|t| t <= job.timeout), "{text:?}");
                assert!(
                    !step
                        .env
                        .keys()
                        .any(|k| PROXY_ENV_VARS.contains(&k.as_str())),
                    "{text:?}"
                );
            }
            for pattern in &job.output_patterns {
                assert!(
                    !pattern.starts_with('/') && !is_reserved_output(pattern),
                    "{pattern:?}"
                );
                assert!(
                    !pattern.split('/').any(|c| c == ".." || c.is_empty()),
                    "{pattern:?}"
                );
            }
            // What validated must survive the JSON wire unchanged.
            let json = serde_json::to_string(&job.spec).expect("serializes");
            assert_eq!(JobSpec::from_json_str(&json).as_ref(), Ok(&job.spec));
            true
        }
        Err(err) => {
            assert_printable(&err, text);
            false
        }
    }
}

#[test]
fn mutated_job_specs_never_panic_and_never_exceed_the_ceilings() {
    let seed_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/good-specs/02-release-from-git.toml");
    let seed = fs::read_to_string(seed_path).expect("seed spec");
    let limits = LimitsConfig::default();
    assert!(check_job(&seed, &limits), "the seed itself must validate");
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..ITERATIONS {
        if check_job(&mutate(&mut rng, &seed), &limits) {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    // Both outcomes must occur, or the mutations are not exercising anything.
    assert!(
        accepted > ITERATIONS / 50 && refused > ITERATIONS / 2,
        "accepted {accepted}, refused {refused}"
    );
}

#[test]
fn mutated_json_specs_never_panic() {
    let seed_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/good-specs/01-design-example.toml");
    let spec =
        JobSpec::from_toml_str(&fs::read_to_string(seed_path).expect("seed")).expect("seed parses");
    let seed = serde_json::to_string_pretty(&spec).expect("serializes");
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut parsed = 0;
    for _ in 0..ITERATIONS / 2 {
        let text = mutate(&mut rng, &seed);
        match JobSpec::from_json_str(&text) {
            Ok(spec) => {
                parsed += 1;
                if let Err(err) = spec.validate(&LimitsConfig::default()) {
                    assert_printable(&err, &text);
                }
            }
            Err(err) => assert_printable(&err, &text),
        }
    }
    assert!(parsed > 0, "no mutated JSON spec parsed at all");
}

#[test]
fn mutated_configs_never_panic() {
    let seed = r#"
builder_id = "https://ci.example.com/bulwark/pool-a"
[limits]
max_timeout = "6h"
max_memory = "16GiB"
max_pids = 4096
job_uids = "200000-265535"
log_cap = "16MiB"
kill_grace = "5s"
[fetch]
allow_private = ["127.0.0.1", "10.0.0.0/8"]
file_roots = ["/srv/tools"]
[egress]
ceiling_untrusted = ["*.example.com:443", "*:443"]
ceiling_trusted = ["*"]
hosts = { "mirror.example" = "10.1.2.3" }
"#;
    let mut rng = XorShift(0xdead_beef_cafe_f00d);
    let mut parsed = 0;
    for _ in 0..ITERATIONS / 2 {
        let text = mutate(&mut rng, seed);
        match Config::from_toml_str(&text) {
            Ok(config) => {
                parsed += 1;
                assert!(
                    config.limits.root_job_uids().first >= 1000
                        && !config.limits.max_timeout.is_zero()
                );
                assert!(!config.egress.audit || config.egress.allow_audit);
            }
            Err(err) => assert_printable(&err, &text),
        }
    }
    assert!(parsed > 0, "no mutated config parsed at all");
}

/// A lease request is the runner's, read by the coordinator: whatever a mutated one holds,
/// reading it never panics, what is read holds at most `MAX_HOLDING` plain job ids, and what
/// is refused says so on one line that names the field or the JSON error.
#[test]
fn mutated_lease_requests_never_panic_and_what_is_read_is_bounded() {
    use bulwark_protocol::control::{check_job_id, LeaseRequest, MAX_HOLDING};
    let seed = r#"{"holding": ["job-0123456789abcdef0123456789abcdef", "job-a", "job_b-9"]}"#;
    let mut rng = XorShift(0x0dd_ba11_5eed_1ea5);
    let (mut read, mut refused) = (0, 0);
    for _ in 0..ITERATIONS {
        let text = mutate(&mut rng, seed);
        match LeaseRequest::parse(text.as_bytes()) {
            Ok(request) => {
                read += 1;
                let held = request.holding.unwrap_or_default();
                assert!(held.len() <= MAX_HOLDING, "{text:?}");
                for id in &held {
                    assert_eq!(check_job_id(id), Ok(()), "{text:?}");
                }
            }
            Err(e) => {
                refused += 1;
                assert!(
                    !e.is_empty() && !e.contains('\n') && e.chars().count() <= 500,
                    "{e:?} for {text:?}"
                );
                assert!(
                    e.starts_with("holding") || e.starts_with("not JSON") || e.contains("object"),
                    "{e:?}"
                );
            }
        }
    }
    assert!(read > 0 && refused > 0, "read {read}, refused {refused}");
}
