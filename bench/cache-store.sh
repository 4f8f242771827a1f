#!/usr/bin/env bash
# Cache-store weighing benchmark: what keeping the store within caches.max_total costs a save
# when the host already holds many caches. Every save reads each saved cache's `current`
# (and lists its tier) under the store lock before it commits (docs/caches.md).
#
# Usage: bench/cache-store.sh [CACHES] [RUNS]      (defaults: 2000 caches, 30 runs)
#
# Two commands, timed by hyperfine in one run: a succeeding job with one small cache against
# a store holding nothing else (the baseline), and the same job against a store holding
# CACHES other saved caches (one tier of one name per scope, made directly in the store's
# layout, a one-file generation each). The difference is the weighing.
set -euo pipefail
cd "$(dirname "$0")/.."
caches=${1:-2000}
runs=${2:-30}
. bench/lib.sh
bench_require hyperfine python3
cargo build --release --quiet -p bulwark-runner -p bulwark-sandbox
bin=$PWD/target/release/bulwark
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
for store in empty full; do
    cat >"$work/$store.toml" <<EOF
[paths]
state_dir = "$work/state-$store"
runtime_dir = "$work/run-$store"
EOF
done
cat >"$work/job.toml" <<'EOF'
version = 1
name = "weigh"
[[caches]]
name = "deps"
[[steps]]
name = "main"
run = "echo x > /cache/deps/f"
EOF
echo "== filling a store with $caches saved caches"
python3 - "$work/state-full/caches" "$caches" <<'PY'
import hashlib, json, os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    key = hashlib.sha256(f"url:https://example.invalid/pr-{i}.tar.gz".encode()).hexdigest()[:32]
    tier = os.path.join(root, key, "deps", "untrusted")
    gen = "gen-%016x" % i
    os.makedirs(os.path.join(tier, gen), mode=0o700)
    with open(os.path.join(tier, gen, "f"), "w") as f:
        f.write("x\n")
    with open(os.path.join(root, key, ".scope"), "w") as f:
        f.write(f"url:https://example.invalid/pr-{i}.tar.gz\n")
    with open(os.path.join(tier, "current"), "w") as f:
        json.dump({"generation": gen, "tree_sha256": "0" * 64, "files": 1, "bytes": 2,
                   "entries": 1, "saved": "2026-11-27T00:00:00Z", "job": "pr",
                   "invocation": ""}, f)
PY
run() { echo "rm -rf $work/out-$1 && $bin run $work/job.toml --config $work/$1.toml --trust trusted --quiet --out $work/out-$1"; }
hyperfine --warmup 3 --runs "$runs" --export-json "$work/result.json" \
    -n empty-store "$(run empty)" -n "store-of-$caches" "$(run full)"
python3 - "$work/result.json" "$caches" <<'PY'
import json, statistics, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
n = sys.argv[2]
e = statistics.median(r["empty-store"]["times"]) * 1000
f = statistics.median(r[f"store-of-{n}"]["times"]) * 1000
print(f"median: empty store {e:.1f} ms, store of {n} caches {f:.1f} ms: "
      f"weighing adds {f - e:.1f} ms ({(f - e) / int(n) * 1000:.1f} us per cache), {f / e:.2f}x")
PY
# Nothing of the full store was removed: none of it was over a bound or unused.
left=$(find "$work/state-full/caches" -mindepth 3 -maxdepth 3 -name untrusted | wc -l)
[ "$left" = "$caches" ] || { echo "the store lost caches: $left of $caches left" >&2; exit 1; }
