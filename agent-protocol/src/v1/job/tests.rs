use super::*;

const DIGEST: &str = "5942c9b0934e510ee61eb3e30273f1b3fe2590df93933a93d7c58b81d19c8ff5";

/// DESIGN.md's example spec, verbatim except for the placeholder digest.
fn design_example() -> String {
    r#"
version = 1
name = "hello"                   # [a-z0-9][a-z0-9._-]{0,62}, as are step and tool names

[source]                         # local mode: --source DIR wins; relative paths are relative to this file
path = "."
# git = "https://example.org/repo.git"   commit = "<40 hex>"   ref = "refs/heads/main"
# url = "https://example.org/src.tar.gz" sha256 = "<64 hex>"

[[tools]]                        # fetched by the runner, sha256-verified, read-only at /tools/<name>
name = "jq"
url = "https://example.org/jq-1.7.tar.gz"
sha256 = "<64 lowercase hex>"
# format = "tar.gz" | "tar.xz" | "zip" | "file"   (inferred from the url when absent)

[network]
allow = ["crates.io:443", "*.githubusercontent.com:443"]   # empty or absent: no network at all

[resources]
timeout = "10m"                  # whole job; durations like 90s, 10m, 1h30m
memory = "4GiB"                  # sizes in B, KiB, MiB, GiB
pids = 1024

[[steps]]                        # all steps share one sandbox, /workspace and /tmp, in order
name = "build"
run = "make dist"                # /bin/sh -c in /workspace
env = { PROFILE = "release" }    # wins over defaults, except the proxy variables
# timeout = "5m"                 # optional per-step limit

[outputs]
paths = ["dist/*.tar.gz"]        # relative to /workspace; globs allowed
"#
    .replace("<64 lowercase hex>", DIGEST)
}

fn minimal(extra: &str) -> String {
    format!("version = 1\nname = \"job\"\n{extra}\n[[steps]]\nname = \"build\"\nrun = \"make\"\n")
}

fn paths_of(err: &SpecError) -> Vec<&str> {
    err.field_errors().iter().map(|e| e.path.as_str()).collect()
}

#[test]
fn the_design_example_parses_and_validates() {
    let spec = JobSpec::from_toml_str(&design_example()).expect("parses");
    let job = spec.validate(&LimitsConfig::default()).expect("validates");
    assert_eq!(job.timeout, Duration::from_secs(600));
    assert_eq!((job.memory, job.pids), (4 << 30, 1024));
    assert_eq!(job.steps.len(), 1);
    assert_eq!(
        job.steps[0].env.get("PROFILE").map(String::as_str),
        Some("release")
    );
    assert_eq!(job.steps[0].timeout, None);
    assert_eq!(job.output_patterns, ["dist/*.tar.gz"]);
    assert_eq!(spec.tools[0].effective_format(), Some(ToolFormat::TarGz));
    assert_eq!(
        spec.source.as_ref().and_then(|s| s.path.as_deref()),
        Some(".")
    );
}

#[test]
fn a_spec_survives_toml_to_json_and_back_unchanged() {
    let mut text = design_example();
    text = text.replace("path = \".\"", "git = \"https://example.org/repo.git\"\ncommit = \"0123456789abcdef0123456789abcdef01234567\"\nref = \"refs/heads/main\"");
    text = text.replace(
        "run = \"make dist\"",
        "run = \"make dist\"\ntimeout = \"5m\"",
    );
    let from_toml = JobSpec::from_toml_str(&text).expect("parses");
    assert_eq!(
        from_toml.source.as_ref().and_then(|s| s.r#ref.as_deref()),
        Some("refs/heads/main")
    );
    let json = serde_json::to_string(&from_toml).expect("serializes");
    assert!(json.contains(r#""ref":"refs/heads/main""#), "{json}");
    let from_json = JobSpec::from_json_str(&json).expect("parses back");
    assert_eq!(from_json, from_toml);
    assert_eq!(
        from_json.validate(&LimitsConfig::default()),
        from_toml.validate(&LimitsConfig::default())
    );
}

#[test]
fn json_specs_refuse_unknown_fields_too() {
    let err = JobSpec::from_json_str(r#"{"version":1,"name":"a","steps":[],"extra":1}"#)
        .expect_err("unknown");
    assert!(matches!(err, SpecError::Syntax { .. }));
    assert!(
        err.to_string().contains("unknown field `extra`") && err.to_string().contains("line 1"),
        "{err}"
    );
}

#[test]
fn a_key_given_twice_is_refused_in_json_as_in_toml() {
    let err = JobSpec::from_json_str(
        r#"{"version":1,"name":"a","steps":[{"name":"s","run":"true","env":{"A":"benign","A":"evil"}}]}"#,
    )
    .expect_err("duplicate");
    assert!(err.to_string().contains(r#"duplicate key "A""#), "{err}");
    let err = JobSpec::from_toml_str(
        "version = 1\nname = \"a\"\n[[steps]]\nname = \"s\"\nrun = \"true\"\nenv = { A = \"x\", A = \"y\" }\n",
    )
    .expect_err("duplicate");
    assert!(err.to_string().contains("duplicate key"), "{err}");
    // One of each is read as before.
    let spec = JobSpec::from_json_str(
        r#"{"version":1,"name":"a","steps":[{"name":"s","run":"true","env":{"A":"1","B":"2"}}]}"#,
    )
    .unwrap();
    assert_eq!(spec.steps[0].env.len(), 2);
}

#[test]
fn another_version_is_named_even_when_it_uses_unknown_fields() {
    let err = JobSpec::from_toml_str("version = 2\nname = \"a\"\n[cache]\nkey = \"x\"\n")
        .expect_err("v2");
    assert_eq!(
        err.to_string(),
        "version: unsupported version 2; this runner reads version 1"
    );
    let err = JobSpec::from_json_str(r#"{"version":3,"cache":{}}"#).expect_err("v3");
    assert_eq!(paths_of(&err), ["version"]);
}

#[test]
fn defaults_are_lowered_to_ceilings_but_explicit_requests_are_not() {
    let spec = JobSpec::from_toml_str(&minimal("")).expect("parses");
    let low = LimitsConfig {
        max_timeout: Duration::from_secs(60),
        max_memory: 1 << 30,
        max_pids: 100,
        ..LimitsConfig::default()
    };
    let job = spec
        .validate(&low)
        .expect("a default never causes a refusal");
    assert_eq!(
        (job.timeout, job.memory, job.pids),
        (Duration::from_secs(60), 1 << 30, 100)
    );
    let job = spec.validate(&LimitsConfig::default()).expect("validates");
    assert_eq!(
        (job.timeout, job.memory, job.pids),
        (DEFAULT_TIMEOUT, DEFAULT_MEMORY, DEFAULT_PIDS)
    );

    let spec = JobSpec::from_toml_str(&minimal(
        "[resources]\ntimeout = \"2m\"\nmemory = \"2GiB\"\npids = 101",
    ))
    .expect("parses");
    let err = spec
        .validate(&low)
        .expect_err("explicit values above the ceiling");
    assert_eq!(
        err.to_string(),
        "resources.timeout: 2m is above the operator's ceiling of 1m (limits.max_timeout)\n\
         resources.memory: 2GiB is above the operator's ceiling of 1GiB (limits.max_memory)\n\
         resources.pids: 101 is above the operator's ceiling of 100 (limits.max_pids)"
    );
}

#[test]
fn a_job_disk_is_the_spec_s_request_or_else_the_operator_s_ceiling() {
    let none = JobSpec::from_toml_str(&minimal("")).expect("parses");
    assert_eq!(
        none.validate(&LimitsConfig::default())
            .expect("validates")
            .disk,
        None
    );
    let ceiling = LimitsConfig {
        max_disk: Some(10 << 30),
        ..LimitsConfig::default()
    };
    assert_eq!(
        none.validate(&ceiling).expect("validates").disk,
        Some(10 << 30)
    );
    let spec = JobSpec::from_toml_str(&minimal("[resources]\ndisk = \"2GiB\"")).expect("parses");
    assert_eq!(
        spec.validate(&ceiling).expect("validates").disk,
        Some(2 << 30)
    );
    for (text, message) in [
        (
            "20GiB",
            "resources.disk: 20GiB is above the operator's ceiling of 10GiB (limits.max_disk)",
        ),
        ("8MiB", "resources.disk: 8MiB is below the minimum of 16MiB"),
        (
            "2GB",
            "resources.disk: \"2GB\" is not a size; only binary units are accepted",
        ),
    ] {
        let spec = JobSpec::from_toml_str(&minimal(&format!("[resources]\ndisk = \"{text}\"")))
            .expect("parses");
        let err = spec.validate(&ceiling).expect_err(text);
        assert!(err.to_string().starts_with(message), "{text}: {err}");
    }
}

#[test]
fn a_cpu_limit_is_the_spec_s_request_or_else_the_operator_s_ceiling() {
    let none = JobSpec::from_toml_str(&minimal("")).expect("parses");
    // No ceiling, no request: not limited.
    let job = none.validate(&LimitsConfig::default()).expect("validates");
    assert_eq!(job.cpus, None);
    let ceiling = LimitsConfig {
        max_cpus: Some(2000),
        ..LimitsConfig::default()
    };
    assert_eq!(none.validate(&ceiling).expect("validates").cpus, Some(2000));
    for (text, millis) in [("1.5", 1500), ("2", 2000), ("0.01", 10)] {
        let spec = JobSpec::from_toml_str(&minimal(&format!("[resources]\ncpus = {text}")))
            .expect("parses");
        assert_eq!(spec.validate(&ceiling).expect(text).cpus, Some(millis));
        // The wire form (JSON) carries it unchanged.
        let json = serde_json::to_string(&spec).expect("serializes");
        assert_eq!(JobSpec::from_json_str(&json).expect("round trip"), spec);
    }
    for (text, message) in [
        ("3", "resources.cpus: 3 is above the operator's ceiling of 2 (limits.max_cpus)"),
        ("2.5", "resources.cpus: 2.5 is above the operator's ceiling of 2 (limits.max_cpus)"),
        ("0", "resources.cpus: 0 is not a positive number of CPUs"),
        ("-1", "resources.cpus: -1 is not a positive number of CPUs"),
        ("0.0", "resources.cpus: 0 is not a positive number of CPUs"),
        ("nan", "resources.cpus: NaN is not a positive number of CPUs"),
        (
            "0.005",
            "resources.cpus: 0.005 is below the smallest CPU limit the kernel enforces, 0.01",
        ),
        (
            "1.0001",
            "resources.cpus: 1.0001 is finer than a thousandth of a CPU; use at most three decimals",
        ),
    ] {
        let spec = JobSpec::from_toml_str(&minimal(&format!("[resources]\ncpus = {text}")))
            .expect("parses");
        let err = spec.validate(&ceiling).expect_err(text);
        assert_eq!(err.to_string(), message);
    }
    let err = JobSpec::from_toml_str(&minimal("[resources]\ncpus = \"2\"")).expect_err("a string");
    assert!(
        err.to_string().contains("a number of CPUs, like 2 or 1.5"),
        "{err}"
    );
}

#[test]
fn every_error_is_reported_in_document_order() {
    let text = r#"
version = 1
name = "Bad Name"
[source]
path = "."
git = "https://example.org/r.git"
[[tools]]
name = "jq"
url = "ftp://example.org/jq"
sha256 = "ABC"
[network]
allow = ["ok.example:443", "nope"]
[resources]
memory = "4GB"
[[steps]]
name = "build"
run = ""
env = { HTTPS_PROXY = "http://evil", "BAD KEY" = "x" }
[[steps]]
name = "build"
run = "true"
timeout = "2h"
[outputs]
paths = ["/etc/passwd", "a/../b", "./result.json"]
"#;
    let spec = JobSpec::from_toml_str(text).expect("parses");
    let err = spec
        .validate(&LimitsConfig::default())
        .expect_err("invalid");
    assert_eq!(
        paths_of(&err),
        [
            "name",
            "source",
            "source.commit",
            "tools[0].url",
            "tools[0].sha256",
            "network.allow[1]",
            "resources.memory",
            "steps[0].run",
            "steps[0].env.\"BAD KEY\"",
            "steps[0].env.HTTPS_PROXY",
            "steps[1].name",
            "steps[1].timeout",
            "outputs.paths[0]",
            "outputs.paths[1]",
            "outputs.paths[2]",
        ]
    );
    let text = err.to_string();
    assert!(
        text.contains("steps[1].name: duplicate step name \"build\" (also steps[0])"),
        "{text}"
    );
    assert!(
        text.contains("steps[1].timeout: 2h is above the job's timeout of 1h (the default"),
        "{text}"
    );
    assert!(
        text.contains("steps[0].env.HTTPS_PROXY: set by the runner; a step cannot override it"),
        "{text}"
    );
}

#[test]
fn output_patterns_lose_their_leading_dot_slash() {
    let spec = JobSpec::from_toml_str(&minimal(
        "[outputs]\npaths = [\"./dist/**/*.whl\", \"a?.txt\", \"result.json.d/x\"]",
    ))
    .expect("parses");
    let job = spec.validate(&LimitsConfig::default()).expect("validates");
    assert_eq!(
        job.output_patterns,
        ["dist/**/*.whl", "a?.txt", "result.json.d/x"]
    );
    assert!(is_reserved_output("./job.log/x") && !is_reserved_output("dist/job.log"));
}

#[test]
fn the_runners_file_names_are_reserved_in_any_case_and_spelling_a_filesystem_folds() {
    for (path, name) in [
        ("JOB.LOG", "job.log"),
        ("Result.Json/x", "result.json"),
        ("./EGRESS.log", "egress.log"),
        ("job.log.", "job.log"),
        ("reſult.json", "result.json"),
        ("provenance.sıgstore.json", "provenance.sigstore.json"),
        ("PROVENANCE.INTOTO.JSONL", "provenance.intoto.jsonl"),
        ("provenance.intoto.jsonl", "provenance.intoto.jsonl"),
        (".JOB.LOG.PARTIAL", ".job.log.partial"),
        // Default-ignorable code points, which ext4's and f2fs's casefold drop (and HFS+
        // some of them).
        ("job\u{200B}.log", "job.log"),
        ("result\u{FE0F}.json/x", "result.json"),
        (".job\u{2060}.log.partial", ".job.log.partial"),
        ("\u{FEFF}egress.log", "egress.log"),
        ("provenance.intoto\u{202E}.jsonl", "provenance.intoto.jsonl"),
        // Case, an invisible joiner and vfat's trailing dot together.
        ("JOB\u{200D}.LOG.", "job.log"),
        // vfat's and NTFS's short names.
        ("RESULT~1.JSO", "result.json"),
        ("./result~2.jso/x", "result.json"),
        ("JOBLOG~1.PAR", ".job.log.partial"),
        ("PROVEN~1.JSO", "provenance.intoto.jsonl"),
    ] {
        assert_eq!(reserved_output(path), Some(name), "{path}");
    }
    for path in [
        "dist/JOB.LOG",
        "job.logs",
        "jobs.log",
        "result-json",
        "dist/RESULT~1.JSO",
        "RESULT~1.JSON",
        "REPORT~1.JSO",
        "job\u{00A0}.log",
    ] {
        assert_eq!(reserved_output(path), None, "{path}");
    }
    // What validation says: the field, the runner's name, the spelling given.
    let spec =
        JobSpec::from_toml_str(&minimal("[outputs]\npaths = [\"Job.Log\"]")).expect("parses");
    let err = spec
        .validate(&LimitsConfig::default())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "outputs.paths[0]: collides with the runner's own file job.log in the output directory \
         where a filesystem folds names (case, Unicode normalization, invisible characters, \
         trailing dots, 8.3 short names: a case-folding ext4 directory, vfat, NTFS, macOS), got \
         \"Job.Log\""
    );
}

#[test]
fn literal_outputs_that_differ_only_in_normalization_are_refused() {
    // `café` precomposed and with a combining accent: one name on ext4's casefold and macOS.
    let spec = JobSpec::from_toml_str(&minimal(
        "[outputs]\npaths = [\"out/caf\u{e9}.txt\", \"out/cafe\u{301}.txt\"]",
    ))
    .expect("parses");
    let err = spec.validate(&LimitsConfig::default()).unwrap_err();
    assert_eq!(err.field_errors().len(), 1, "{err}");
    assert_eq!(err.field_errors()[0].path, "outputs.paths[1]");
    assert!(
        err.field_errors()[0]
            .message
            .contains("differ only in case, Unicode normalization,"),
        "{err}"
    );
}

#[test]
fn literal_outputs_that_differ_only_in_case_are_refused_naming_both() {
    let spec = JobSpec::from_toml_str(&minimal(
        "[outputs]\npaths = [\"out/A.txt\", \"out/a.txt\", \"out/a.txt\", \"out/?.txt\"]",
    ))
    .expect("parses");
    let err = spec.validate(&LimitsConfig::default()).unwrap_err();
    // Reported once per later spelling; the same path twice is no collision.
    assert_eq!(err.field_errors().len(), 2, "{err}");
    assert_eq!(err.field_errors()[0].path, "outputs.paths[1]");
    assert!(
        err.field_errors()[0]
            .message
            .starts_with("\"out/a.txt\" and outputs.paths[0] \"out/A.txt\" differ only in case"),
        "{err}"
    );
    assert_eq!(err.field_errors()[1].path, "outputs.paths[2]");
}

#[test]
fn tool_formats_are_inferred_only_from_known_extensions() {
    assert_eq!(
        ToolFormat::infer("https://e.org/x.tgz?sig=1"),
        Some(ToolFormat::TarGz)
    );
    assert_eq!(
        ToolFormat::infer("https://e.org/x.tar.xz"),
        Some(ToolFormat::TarXz)
    );
    assert_eq!(
        ToolFormat::infer("https://e.org/x.zip#frag"),
        Some(ToolFormat::Zip)
    );
    assert_eq!(ToolFormat::infer("https://e.org/jq-linux-amd64"), None);
    assert_eq!(ToolFormat::infer("https://e.org/.zip"), None);
    let err = JobSpec::from_toml_str(&minimal(&format!(
        "[[tools]]\nname = \"jq\"\nurl = \"https://e.org/jq-linux-amd64\"\nsha256 = \"{DIGEST}\""
    )))
    .expect("parses")
    .validate(&LimitsConfig::default())
    .expect_err("no format");
    assert_eq!(paths_of(&err), ["tools[0].format"]);
    assert_eq!(
        serde_json::to_string(&ToolFormat::TarXz).expect("serializes"),
        "\"tar.xz\""
    );
}

#[test]
fn quoted_values_in_messages_are_escaped_and_bounded() {
    let name = format!("\\u001b[31m{}", "x".repeat(10_000));
    let spec = JobSpec::from_toml_str(&format!(
        "version = 1\nname = \"{name}\"\n[[steps]]\nname = \"a\"\nrun = \"b\""
    ));
    let err = spec
        .expect("parses")
        .validate(&LimitsConfig::default())
        .expect_err("bad name");
    let text = err.to_string();
    assert!(!text.contains('\u{1b}') && text.len() < 200, "{text}");
}

#[test]
fn tools_may_not_take_the_names_provenance_gives_the_source_and_root_filesystem() {
    for name in ["source", "rootfs"] {
        let err = JobSpec::from_toml_str(&minimal(&format!(
            "[[tools]]\nname = \"{name}\"\nurl = \"https://e.org/t.tar.gz\"\nsha256 = \"{DIGEST}\""
        )))
        .expect("parses")
        .validate(&LimitsConfig::default())
        .expect_err("reserved");
        assert_eq!(paths_of(&err), ["tools[0].name"], "{name}");
        assert!(
            err.to_string()
                .contains(&format!("\"{name}\" is reserved: provenance lists")),
            "{err}"
        );
    }
}

#[test]
fn a_source_url_must_be_written_in_the_form_the_runner_fetches() {
    let err = JobSpec::from_toml_str(&minimal(&format!(
        "[source]\ngit = \"https://e.org/org/../attacker/app.git\"\ncommit = \"{}\"",
        "a".repeat(40)
    )))
    .expect("parses")
    .validate(&LimitsConfig::default())
    .expect_err("not normal");
    assert_eq!(paths_of(&err), ["source.git"]);
    assert!(
        err.to_string()
            .contains("source.git: write it as \"https://e.org/attacker/app.git\""),
        "{err}"
    );
}

fn two_steps(credentials: &str, build: &str, publish: &str) -> Result<ValidatedJob, SpecError> {
    let text = format!(
        "version = 1\nname = \"job\"\ncredentials = [{credentials}]\n\
         [[steps]]\nname = \"build\"\nrun = \"make\"\n{build}\n\
         [[steps]]\nname = \"publish\"\nrun = \"make upload\"\n{publish}\n"
    );
    JobSpec::from_toml_str(&text)?.validate(&LimitsConfig::default())
}

#[test]
fn steps_read_every_credential_until_one_step_lists_its_own() {
    let job = two_steps(r#""aws", "gcp""#, "", "").unwrap();
    assert_eq!(job.steps[0].credentials, ["aws", "gcp"]);
    assert_eq!(job.steps[1].credentials, ["aws", "gcp"]);
    // Once one step lists credentials, a step that lists none reads none.
    let job = two_steps(r#""aws", "gcp""#, "", r#"credentials = ["gcp", "aws"]"#).unwrap();
    assert!(job.steps[0].credentials.is_empty());
    assert_eq!(job.steps[1].credentials, ["gcp", "aws"]);
    let job = two_steps(r#""aws""#, "credentials = []", r#"credentials = ["aws"]"#).unwrap();
    assert!(job.steps[0].credentials.is_empty());
    assert_eq!(job.steps[1].credentials, ["aws"]);
    // No credentials at all: nothing to read.
    let job = two_steps("", "", "").unwrap();
    assert!(job.steps.iter().all(|s| s.credentials.is_empty()));
}

#[test]
fn a_step_s_credentials_must_be_the_job_s_each_once_and_each_of_the_job_s_read_by_a_step() {
    let err = two_steps(
        r#""aws", "gcp""#,
        r#"credentials = ["vault"]"#,
        r#"credentials = ["aws", "aws"]"#,
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("steps[0].credentials[0]: \"vault\" is not one of the job's credentials; list it in the top-level `credentials` too"),
        "{text}"
    );
    assert!(
        text.contains(
            "steps[1].credentials[1]: duplicate credential \"aws\" (also steps[1].credentials[0])"
        ),
        "{text}"
    );
    assert!(
        text.contains("credentials[1]: \"gcp\" is read by no step"),
        "{text}"
    );
    assert!(
        !text.contains("credentials[0]: \"aws\" is read by no step"),
        "{text}"
    );
    // A step asking for credentials of a job that has none.
    let err = two_steps("", r#"credentials = ["aws"]"#, "").unwrap_err();
    assert_eq!(paths_of(&err), ["steps[0].credentials[0]"]);
    // Bounded like the job's list.
    let many: Vec<String> = (0..=MAX_CREDENTIALS).map(|i| format!("\"c{i}\"")).collect();
    let err = two_steps(
        r#""aws""#,
        &format!("credentials = [{}]", many.join(", ")),
        "",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "steps[0].credentials: {} names; at most {MAX_CREDENTIALS}",
            MAX_CREDENTIALS + 1
        )),
        "{err}"
    );
    // Unknown keys in a step are still refused.
    let err = two_steps(r#""aws""#, "credential = [\"aws\"]", "").unwrap_err();
    assert!(
        err.to_string().contains("unknown field `credential`"),
        "{err}"
    );
}
