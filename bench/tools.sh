#!/usr/bin/env bash
# Tool store benchmark: cold fetch + sha256 verify of a 256 MiB file from a loopback server,
# paired against `curl -o` followed by `openssl dgst -sha256`, and the warm cache-hit cost.
# Usage: bench/tools.sh [SIZE_MIB] [RUNS]      (defaults: 256, 5)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-256}
runs=${2:-5}
. bench/lib.sh
bench_require hyperfine curl openssl python3
cargo build --release --quiet --example fetch_bench -p bulwark-runner
bin=target/release/examples/fetch_bench
work=$(mktemp -d)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    chmod -R u+w "$work" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir "$work/www"
head -c "$((size_mib << 20))" /dev/urandom >"$work/www/tool.bin"
sha=$(openssl dgst -sha256 -r "$work/www/tool.bin" | cut -d' ' -f1)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 &
server_pid=$!
url="http://127.0.0.1:$port/tool.bin"
for _ in $(seq 50); do curl -sf -o /dev/null -r 0-0 "$url" && break; sleep 0.1; done

echo "== cold fetch + verify of ${size_mib} MiB, store vs curl + openssl"
hyperfine --warmup 1 --runs "$runs" --export-json "$work/cold.json" \
    --prepare "chmod -R u+w $work/store $work/x 2>/dev/null; rm -rf $work/store $work/x" \
    -n store "$bin $work/store $url $sha" \
    -n curl+openssl "curl -s -o $work/x $url && openssl dgst -sha256 $work/x"

echo "== warm cache hit (one tool)"
"$bin" "$work/warm" "$url" "$sha" >/dev/null
hyperfine --warmup 3 --runs 30 -N --export-json "$work/warm.json" \
    -n cache-hit "$bin $work/warm $url $sha"

python3 - "$work/cold.json" "$work/warm.json" <<'PY'
import json, sys
cold = {r["command"]: r["median"] for r in json.load(open(sys.argv[1]))["results"]}
warm = {r["command"]: r["median"] for r in json.load(open(sys.argv[2]))["results"]}
ratio = cold["store"] / cold["curl+openssl"]
print(f"cold: store {cold['store']*1000:.0f} ms, curl+openssl {cold['curl+openssl']*1000:.0f} ms, ratio {ratio:.2f}x (target <= 1.0x, aim 0.8x)")
print(f"warm: cache hit {warm['cache-hit']*1000:.2f} ms per run, process start included (target <= 5 ms)")
PY
