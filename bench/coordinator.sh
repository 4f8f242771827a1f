#!/usr/bin/env bash
# Coordinator capacity: signed runner requests per second and their latency, from one
# registered runner on loopback (runner/examples/coordinator_load.rs, through the daemon's own
# client), with CLIENTS requests in flight; then the same while FORGERS more tasks send
# requests claiming that runner but signed by another key, as someone who learnt a runner id
# would. Each request is a lease poll on an empty queue (answered 204): a signature check, a
# nonce recorded and a lease query, the work every idle daemon in a fleet causes.
#
# Usage: bench/coordinator.sh [seconds] [clients] [forgers]     (defaults: 10, 16, 16)
#        COORDINATOR_B=/path/to/other/bulwark-coordinator bench/coordinator.sh ...
#            runs each measurement against both coordinators in turn (an A/B of two builds)
# Results go to stdout; copy them into docs/benchmarks.md with the host description.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SECONDS_EACH=${1:-10}
CLIENTS=${2:-16}
FORGERS=${3:-16}
ROUNDS=${ROUNDS:-3}
cargo build --release -q -p bulwark-coordinator -p bulwark-runner --bin bulwark --bin bulwark-coordinator --example coordinator_load
TARGET=${CARGO_TARGET_DIR:-target}/release
bench_workdir coordinator
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# start NAME BINARY: a coordinator with its own state and a runner registered with it, in
# $work/NAME; the runner's configuration is $work/NAME/config.toml.
start() {
  local name=$1 bin=$2 dir=$work/$1
  mkdir -p "$dir"
  "$bin" init --state "$dir/coord" --issuer https://ci.example.com >/dev/null
  "$bin" serve --state "$dir/coord" --listen 127.0.0.1:0 2>"$dir/serve.log" &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q '^listening on' "$dir/serve.log" && break; sleep 0.05; done
  local addr
  addr=$(sed -n 's/^listening on //p' "$dir/serve.log")
  "$bin" registration-token --state "$dir/coord" --ttl 10m >"$dir/token"
  printf '[paths]\nstate_dir = "%s"\nruntime_dir = "%s"\n' "$dir/state" "$dir/run" >"$dir/config.toml"
  "$TARGET/bulwark" register --coordinator "http://$addr" --token-file "$dir/token" \
    --name bench --config "$dir/config.toml" >/dev/null
}

start a "$TARGET/bulwark-coordinator"
NAMES=(a)
if [[ -n ${COORDINATOR_B:-} ]]; then
  start b "$COORDINATOR_B"
  NAMES+=(b)
fi
echo "machine: $(nproc) CPUs, $(uname -r); ${SECONDS_EACH}s per measurement, $CLIENTS clients, $FORGERS forgers, $ROUNDS rounds"
for round in $(seq "$ROUNDS"); do
  for name in "${NAMES[@]}"; do
    echo "round $round $name alone:   $("$TARGET/examples/coordinator_load" "$work/$name/state" "$CLIENTS" "$SECONDS_EACH")"
    echo "round $round $name flooded: $("$TARGET/examples/coordinator_load" "$work/$name/state" "$CLIENTS" "$SECONDS_EACH" "$FORGERS")"
  done
done
