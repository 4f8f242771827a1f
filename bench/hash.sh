#!/usr/bin/env bash
# Output collection benchmark (issue: signed provenance).
#
# The real collect path (bulwark_runner::outputs::collect: fd-relative walk, checks, copy and
# sha256 in one pass) against `cp` followed by `openssl dgst -sha256` on the same file, paired in
# one hyperfine run; then 1000 small outputs to show the parallel path.
#
# Usage: bench/hash.sh [SIZE_MIB] [RUNS]     (defaults 1024 and 10)
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1024}
runs=${2:-10}
command -v hyperfine >/dev/null || { echo "needs hyperfine" >&2; exit 2; }
cargo build --release --locked -q --example collect_bench
bin=$PWD/target/release/examples/collect_bench
# tmpfs by default: the comparison is of CPU work (copy + hash), not of this VM's disk, whose
# writeback throttling made disk-backed runs vary by ±30%. BENCH_DIR=/var/tmp measures on disk.
work=$(mktemp -d "${BENCH_DIR:-/dev/shm}/bulwark-hash.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/ws/many"
head -c "$((size * 1024 * 1024))" /dev/urandom > "$work/ws/big.bin"
for i in $(seq 1000); do head -c 65536 /dev/urandom > "$work/ws/many/f$i.bin"; done
echo "machine: $(nproc) vCPU, kernel $(uname -r); file ${size} MiB; work dir $work"
hyperfine --warmup 1 --runs "$runs" --export-json "$work/hf.json" \
  --prepare "rm -rf $work/out && mkdir $work/out && sync" \
  -n collect "$bin $work/ws $work/out big.bin" \
  -n cp+openssl "cp $work/ws/big.bin $work/out/big.bin && openssl dgst -sha256 $work/out/big.bin" >/dev/null
hyperfine --warmup 1 --runs "$runs" --export-json "$work/many.json" \
  --prepare "rm -rf $work/out && mkdir $work/out && sync" \
  -n collect-1000 "$bin $work/ws $work/out 'many/*.bin'" \
  -n cp+openssl-1000 "cp -r $work/ws/many $work/out/ && openssl dgst -sha256 $work/out/many/*.bin" >/dev/null
python3 - "$work/hf.json" "$work/many.json" <<'PY'
import json, statistics, sys
for f in sys.argv[1:]:
    r = {x["command"]: x["times"] for x in json.load(open(f))["results"]}
    names = list(r)
    base = statistics.median(r[names[1]])
    for n in names:
        m = statistics.median(r[n])
        print(f"{n:<18} median {m*1000:8.1f} ms  ({m/base:.2f}x {names[1]})")
PY
