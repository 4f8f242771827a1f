#!/usr/bin/env bash
# Throughput of masking credentials in the job log (runner/src/creds/mask.rs) against an
# unmasked copy of the same 64 KiB chunks, in one run (runner/examples/mask_throughput.rs):
# a 64 MiB build log with a credential printed every 64 KiB, with 1, 5, 15 and 200 credentials
# (5: what one job gets from the three kinds; AWS has three values; 200: a day-long job's
# refreshed ones). The log cap is 16 MiB by default, so this is four times the most one job's
# log is scanned. Also the search for the same credentials in a cache being saved
# (`find_mb_s`), over the log without them.
#
#   bench/mask.sh [MiB]
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-64}
cargo build --release -q -p bulwark-runner --example mask_throughput
for n in 1 5 15 200; do
  target/release/examples/mask_throughput "$mib" "$n"
done
