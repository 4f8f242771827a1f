#!/usr/bin/env bash
# Provenance and signing overhead (issue: signed provenance).
#
# Runs a job with 1 output and one with 1000 outputs, each N times, and reports the time the
# runner spent building the Statement, hashing its byproducts and its own binary, reading the
# key, signing (P-256 and Ed25519) and writing both provenance files: the milliseconds
# provenance adds to a job. The runner logs that span at info level.
#
# Usage: bench/provenance.sh [RUNS]   (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
${BULWARK_SKIP_BUILD:+true} cargo build --release --locked -q
bin=${BULWARK_BIN:-$PWD/target/release/bulwark}
. bench/lib.sh
bench_workdir prov
mkdir -p "$work/src"
for n in 1 1000; do
  cat > "$work/job$n.toml" <<TOML
version = 1
name = "outputs$n"
[[steps]]
name = "make"
run = "mkdir -p dist && for i in \$(seq $n); do echo \$i > dist/f\$i.txt; done"
[outputs]
paths = ["dist/*.txt"]
TOML
done
echo "machine: $(nproc) vCPU, kernel $(uname -r), $(id -un)"
for alg in p256 ed25519; do
  "$bin" keygen --out "$work/key-$alg" --algorithm "$alg" >/dev/null
  for n in 1 1000; do
    : > "$work/times"
    for i in $(seq "$runs"); do
      BULWARK_LOG=info "$bin" run -q --config "$work/config.toml" --key "$work/key-$alg/signing.key" \
        --source "$work/src" --out "$work/out-$alg-$n-$i" "$work/job$n.toml" 2>&1 >/dev/null \
        | sed -n 's/.*provenance_ms=\([0-9.]*\).*/\1/p' >> "$work/times"
      rm -rf "$work/out-$alg-$n-$i"
    done
    python3 - "$work/times" "$alg" "$n" <<'PY'
import statistics, sys
xs = [float(l) for l in open(sys.argv[1]) if l.strip()]
xs.sort()
print(f"{sys.argv[2]:<8} {int(sys.argv[3]):>5} outputs: provenance adds median {statistics.median(xs):6.2f} ms, p95 {xs[int(0.95*(len(xs)-1))]:6.2f} ms over {len(xs)} runs")
PY
  done
done
