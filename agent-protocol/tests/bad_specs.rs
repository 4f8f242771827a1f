//! Every file in `tests/bad-specs/` is a malformed job spec whose first line is
//! `# expect: <text>`; reading and validating it must fail with an error containing `<text>`.
//! Every file in `tests/good-specs/` must read and validate. These pin the user-facing
//! messages: changing one is a deliberate act that shows up here.

use std::fs;
use std::path::{Path, PathBuf};

use bulwark_protocol::{JobSpec, LimitsConfig, SpecError};

fn specs_in(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(dir);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

fn read_and_validate(text: &str) -> Result<(), SpecError> {
    JobSpec::from_toml_str(text)?
        .validate(&LimitsConfig::default())
        .map(drop)
}

#[test]
fn every_bad_spec_is_refused_with_its_expected_message() {
    let files = specs_in("bad-specs");
    assert!(
        files.len() >= 30,
        "the corpus has only {} bad specs; keep at least 30",
        files.len()
    );
    let mut failures = Vec::new();
    for path in &files {
        let name = path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        let text = fs::read_to_string(path).expect("readable spec");
        let expected = text
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("# expect: "))
            .unwrap_or_else(|| {
                panic!("{name}: the first line must be `# expect: <message substring>`")
            });
        match read_and_validate(&text) {
            Ok(()) => failures.push(format!(
                "{name}: accepted, expected an error containing {expected:?}"
            )),
            Err(err) if !err.to_string().contains(expected) => {
                failures.push(format!(
                    "{name}: expected {expected:?}\n    got {:?}",
                    err.to_string()
                ));
            }
            Err(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad specs failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn bad_spec_names_are_numbered_and_unique() {
    let mut numbers: Vec<String> = specs_in("bad-specs")
        .iter()
        .map(|p| {
            p.file_name()
                .expect("file name")
                .to_string_lossy()
                .chars()
                .take(2)
                .collect()
        })
        .collect();
    assert!(
        numbers
            .iter()
            .all(|n| n.bytes().all(|b| b.is_ascii_digit())),
        "{numbers:?}"
    );
    let count = numbers.len();
    numbers.dedup();
    assert_eq!(numbers.len(), count, "two bad specs share a number");
}

#[test]
fn every_good_spec_validates() {
    let files = specs_in("good-specs");
    assert!(
        files.len() >= 3,
        "keep at least 3 good specs, found {}",
        files.len()
    );
    for path in files {
        let text = fs::read_to_string(&path).expect("readable spec");
        if let Err(err) = read_and_validate(&text) {
            panic!("{}: {err}", path.display());
        }
    }
}
