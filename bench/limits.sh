#!/usr/bin/env bash
# What the optional limits add to a job's launch: `bulwark run` of a no-op job (one step
# `true`, no outputs), interleaved run by run, in four variants:
#   plain   no CPU limit, no disk of its own
#   cpus    [resources] cpus = 1        (one more cgroup, v1 cpu or v2 cpu.max)
#   disk    [resources] disk = "SIZE"   (fallocate, mkfs.ext4, loop device, mount, unmount)
#   both
# Each iteration times every variant once, in an order that rotates, from one Python process
# (posix_spawn, waitpid, CLOCK_MONOTONIC), with a fresh empty --out made before the timer.
#
# Usage: bench/limits.sh [RUNS] [DISK_SIZE]   (as root: job disks need it; default 100, 1GiB)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-100}
size=${2:-1GiB}
[[ "$(id -u)" == 0 ]] || { echo "bench/limits.sh: needs root (job disks)" >&2; exit 2; }
cargo build --release --locked -q
bin=$PWD/target/release/bulwark
. bench/lib.sh
bench_workdir limits
job() { printf 'version = 1\nname = "noop"\n%s\n[[steps]]\nname = "noop"\nrun = "true"\n' "$1" > "$work/$2.toml"; }
job "" plain
job $'[resources]\ncpus = 1' cpus
job "[resources]"$'\n'"disk = \"$size\"" disk
job "[resources]"$'\n'"cpus = 1"$'\n'"disk = \"$size\"" both
mkdir -p "$work/outs"
echo "machine: $(nproc) vCPU, $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r); job directories on $(df --output=fstype "$work" | tail -1); disk $size"
python3 - "$work" "$bin" "$runs" <<'PY'
import os, statistics, sys, tempfile, time
work, bin, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = f"{work}/config.toml"
names = ["plain", "cpus", "disk", "both"]
null = os.open("/dev/null", os.O_WRONLY)
times = {k: [] for k in names}
for i in range(5 + runs):
    for name in names[i % 4:] + names[:i % 4]:
        out = tempfile.mkdtemp(dir=f"{work}/outs")
        argv = [bin, "run", "-q", "--config", cfg, "--out", out, f"{work}/{name}.toml"]
        t0 = time.monotonic_ns()
        pid = os.posix_spawn(bin, argv, os.environ,
                             file_actions=[(os.POSIX_SPAWN_DUP2, null, 1), (os.POSIX_SPAWN_DUP2, null, 2)])
        _, st = os.waitpid(pid, 0)
        dt = (time.monotonic_ns() - t0) / 1e6
        if st != 0:
            sys.exit(f"{name}: exit status {st}")
        if i >= 5:
            times[name].append(dt)
def pct(xs, p):
    xs = sorted(xs); k = (len(xs) - 1) * p; f = int(k); c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)
base = statistics.median(times["plain"])
print(f"\n{'variant':<8}{'median ms':>11}{'p95 ms':>9}{'added ms':>10}")
for name in names:
    m = statistics.median(times[name])
    print(f"{name:<8}{m:>11.2f}{pct(times[name], 0.95):>9.2f}{m - base:>10.2f}")
PY
