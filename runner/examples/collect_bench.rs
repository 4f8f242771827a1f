//! Times the real output-collection path (walk, checks, copy and sha256 in one pass) on a
//! directory, for `bench/hash.sh`.
//!
//! Usage: collect_bench WORKSPACE OUT PATTERN...
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Instant;

use bulwark_runner::outputs::{collect, Bounds};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(ws), Some(out)) = (args.next(), args.next()) else {
        eprintln!("usage: collect_bench WORKSPACE OUT PATTERN...");
        std::process::exit(2);
    };
    let patterns: Vec<String> = args.collect();
    let t = Instant::now();
    match collect(
        &PathBuf::from(ws),
        &patterns,
        &PathBuf::from(out),
        Bounds {
            max_outputs: u64::MAX,
            max_bytes: u64::MAX,
        },
    ) {
        Ok(recs) => {
            let bytes: u64 = recs.iter().map(|r| r.size).sum();
            eprintln!(
                "{} files, {bytes} bytes in {:.3} s",
                recs.len(),
                t.elapsed().as_secs_f64()
            );
        }
        Err(e) => {
            eprintln!("collect failed: {e}");
            std::process::exit(1);
        }
    }
}
