#!/usr/bin/env bash
# Build-cache benchmark: what restoring a cache into a job, and saving it after, adds to a
# `bulwark run`, against copying the same tree with `cp -a` (restore) and `cp -a` plus
# `sha256sum` of every file (save: the runner hashes while it copies).
#
# Usage: bench/caches.sh [FILES] [KIB_PER_FILE] [RUNS]     (defaults: 4096, 64, 5: 256 MiB)
#
# Four commands, timed by hyperfine: a failing job without caches (no restore, no save), the
# same with the cache (restore only: a failed job saves nothing), a succeeding job with the
# cache (restore and save), and the baselines. Restore = second - first; save = third - second.
set -euo pipefail
cd "$(dirname "$0")/.."
files=${1:-4096}
kib=${2:-64}
runs=${3:-5}
. bench/lib.sh
bench_require hyperfine python3 sha256sum
cargo build --release --quiet -p bulwark-runner -p bulwark-sandbox
bin=$PWD/target/release/bulwark
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
cat >"$work/config.toml" <<EOF
[limits]
kill_grace = "1s"
[paths]
state_dir = "$work/state"
runtime_dir = "$work/run"
[caches]
max_size = "64GiB"
max_entries = 10000000
EOF
job() { # name, step command, with cache (0/1)
    {
        printf 'version = 1\nname = "%s"\n' "$1"
        [ "$3" = 1 ] && printf '[[caches]]\nname = "deps"\n'
        printf '[[steps]]\nname = "main"\nrun = '"'''"'\n%s\n'"'''"'\n' "$2"
    } >"$work/$1.toml"
}
job seed "python3 -c \"import os
for i in range($files):
    d = '/cache/deps/d%03d' % (i % 256)
    os.makedirs(d, exist_ok=True)
    open('%s/f%06d' % (d, i), 'wb').write(os.urandom($kib * 1024))\"" 1
job fail-nocache "exit 1" 0
job fail-cache "exit 1" 1
job ok-cache "true" 1
run() { echo "$bin run $work/$1.toml --config $work/config.toml --trust trusted --quiet --out $work/out-$1"; }
echo "== seeding a cache of $files files x $kib KiB"
$bin run "$work/seed.toml" --config "$work/config.toml" --trust trusted --quiet --out "$work/out-seed" >/dev/null
tree=$(find "$work/state/caches" -maxdepth 4 -type d -name 'gen-*' | head -1)
[ -d "$tree" ] || { echo "the seed job saved no cache" >&2; exit 1; }
du -sh "$tree"
# The baselines copy a copy: every successful job below replaces the stored generation.
cp -a "$tree" "$work/baseline"

hyperfine --warmup 1 --runs "$runs" --export-json "$work/result.json" \
    --prepare "rm -rf $work/out-fail-nocache $work/out-fail-cache $work/out-ok-cache $work/copy" \
    -i -n fail-nocache "$(run fail-nocache)" \
    -n fail-cache "$(run fail-cache)" \
    -n ok-cache "$(run ok-cache)" \
    -n "cp -a" "cp -a $work/baseline $work/copy" \
    -n "cp -a + sha256sum" "cp -a $work/baseline $work/copy && find $work/copy -type f -exec sha256sum {} + >/dev/null"

python3 - "$work/result.json" "$files" "$kib" <<'PY'
import json, sys
r = {x["command"]: x["median"] for x in json.load(open(sys.argv[1]))["results"]}
mib = int(sys.argv[2]) * int(sys.argv[3]) / 1024
restore = r["fail-cache"] - r["fail-nocache"]
save = r["ok-cache"] - r["fail-cache"]
print(f"tree: {sys.argv[2]} files, {mib:.0f} MiB")
print(f"restore: {restore*1000:.0f} ms ({mib/restore:.0f} MiB/s); cp -a {r['cp -a']*1000:.0f} ms: {restore/r['cp -a']:.2f}x")
print(f"save:    {save*1000:.0f} ms ({mib/save:.0f} MiB/s); cp -a + sha256sum {r['cp -a + sha256sum']*1000:.0f} ms: {save/r['cp -a + sha256sum']:.2f}x")
PY
