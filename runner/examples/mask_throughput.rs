//! Throughput of the job log's secret masking (`creds::mask::Masker`), against copying the
//! same stream unmasked, in one run; and of looking for the same credentials in a cache being
//! saved (`creds::mask::Finder`, over the log without them: a clean cache is read to its
//! end). Run by `bench/mask.sh`; results in docs/benchmarks.md.
//!
//!   cargo run --release -p bulwark-runner --example mask_throughput -- [MiB] [secrets]
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use bulwark_runner::creds::mask::{Finder, Masker};

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().map(|a| a.parse().unwrap()).unwrap_or(64);
    let n_secrets: usize = args.next().map(|a| a.parse().unwrap()).unwrap_or(5);
    // Secrets shaped like what the exchanges issue: an AWS key id (20), secret key (40),
    // session token (~800), an OAuth access token (~60), a Vault token (~95).
    // Each byte is a hash of (i, j), so every secret is its own value (a byte that depended
    // only on `i mod 130` made 200 secrets 130 distinct ones).
    let lens = [20, 40, 800, 60, 95];
    let letter = |i: usize, j: usize| {
        let mut h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (j as u64);
        h = (h ^ (h >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (b'A' + ((h ^ (h >> 31)) % 26) as u8) as char
    };
    let secrets: Vec<String> = (0..n_secrets)
        .map(|i| (0..lens[i % lens.len()]).map(|j| letter(i, j)).collect())
        .collect();
    let distinct: std::collections::BTreeSet<&String> = secrets.iter().collect();
    assert_eq!(
        distinct.len(),
        n_secrets,
        "the secrets are not all distinct"
    );
    // A build log: compiler lines, with a secret printed every 64 KiB.
    let line = "   Compiling serde_derive v1.0.219 (registry+https://github.com/rust-lang/crates.io-index)\n";
    let mut log = Vec::with_capacity(mib << 20);
    let mut k = 0;
    while log.len() < mib << 20 {
        log.extend_from_slice(line.as_bytes());
        if log.len() % (64 << 10) < line.len() && !secrets.is_empty() {
            log.extend_from_slice(secrets[k % secrets.len()].as_bytes());
            log.push(b'\n');
            k += 1;
        }
    }
    let chunk = 64 << 10;
    let time = |f: &mut dyn FnMut() -> usize| {
        let mut best = f64::MAX;
        let mut out = 0;
        for _ in 0..5 {
            let t = Instant::now();
            out = f();
            best = best.min(t.elapsed().as_secs_f64());
        }
        (best, out)
    };
    let (copy, copied) = time(&mut || {
        let mut out = Vec::with_capacity(log.len());
        for c in log.chunks(chunk) {
            out.extend_from_slice(c);
        }
        std::hint::black_box(&out);
        out.len()
    });
    let (mask, masked) = time(&mut || {
        let mut m = Masker::new(secrets.iter().map(String::as_str));
        let mut out = Vec::with_capacity(log.len());
        for c in log.chunks(chunk) {
            out.extend(m.feed(c));
        }
        out.extend(m.finish());
        std::hint::black_box(&out);
        out.len()
    });
    let clean: Vec<u8> = line.as_bytes().repeat(log.len() / line.len());
    let (find, found) = time(&mut || {
        let finder = Finder::new(secrets.iter().map(|s| ("cred", s.as_str())));
        let mut scan = finder.scan();
        clean
            .chunks(chunk)
            .filter(|c| scan.feed(c).is_some())
            .count()
    });
    assert_eq!(found, 0);
    let mb = log.len() as f64 / 1e6;
    let find_mb_s = clean.len() as f64 / 1e6 / find;
    println!(
        "{{\"bytes\": {}, \"secrets\": {n_secrets}, \"printed\": {k}, \"copy_mb_s\": {:.0}, \"mask_mb_s\": {:.0}, \"ratio\": {:.3}, \"find_mb_s\": {find_mb_s:.0}, \"copied\": {copied}, \"masked\": {masked}}}",
        log.len(),
        mb / copy,
        mb / mask,
        copy / mask
    );
}
