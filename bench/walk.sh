#!/usr/bin/env bash
# Memory and time of the search for outputs (runner/src/outputs.rs, through
# runner/examples/collect_bench.rs) over a workspace of N empty files in its top directory
# beside the one output, `dist/app.txt`: the largest resident set (`/usr/bin/time`) and the
# wall time, for a literal pattern and for `**/app.txt`. Two builds can be compared in one
# run by naming another collect_bench binary.
#
#   bench/walk.sh [N] [COLLECT_BENCH...]     (default: 1000000 and this tree's release build)
#   BENCH_DIR=/var/tmp bench/walk.sh         (tmpfs /dev/shm by default)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
shift || true
bins=("$@")
if [[ ${#bins[@]} -eq 0 ]]; then
  cargo build --release -q -p bulwark-runner --example collect_bench
  bins=(target/release/examples/collect_bench)
fi
dir=$(mktemp -d "${BENCH_DIR:-/dev/shm}/bulwark-walk.XXXXXX")
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/ws/dist"
echo ok > "$dir/ws/dist/app.txt"
python3 - "$dir/ws" "$n" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    os.close(os.open(f"{d}/f{i:07d}", os.O_CREAT | os.O_WRONLY, 0o644))
PY
echo "workspace: $n empty files and dist/app.txt in $dir/ws"
for round in 1 2; do
  for bin in "${bins[@]}"; do
    for pattern in dist/app.txt '**/app.txt'; do
      rm -rf "$dir/out" && mkdir "$dir/out"
      /usr/bin/time -f "round $round  $bin  $pattern: max RSS %M KiB, %e s" \
        "$bin" "$dir/ws" "$dir/out" "$pattern" 2>&1 | grep -v ' files, '
    done
  done
done
