#!/usr/bin/env bash
# Launch benchmark (issue: sandbox foundation).
#
# Paired in one run, median and p95 over RUNS runs each:
#   floor   plain fork/exec of /bin/true
#   bwrap   Debian's bubblewrap with --unshare-all (no cgroups, no Landlock, no seccomp)
#   exec    bulwark exec -- /bin/true: every layer on, including the job's cgroup creation,
#           migration and removal, from exec of the bulwark binary to reap
#   run     bulwark run of a no-op job (one step `true`, no outputs), with a fresh empty
#           --out directory made before each timed run
# Interleaved run by run: each iteration times floor, bwrap, exec and run once each, in an
# order that rotates every iteration (fork/exec/wait from one Python process,
# CLOCK_MONOTONIC), so the VM's drift between seconds hits every command alike. The iterations are also split into ROUNDS consecutive
# blocks; the report gives the median per-block ratio and its range next to the pooled medians.
# Then per-phase medians of `bulwark exec --phases` over RUNS runs.
#
# Usage: bench/launch.sh [RUNS] [ROUNDS]   (as root for the per-job uid and cgroup path)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-200}
rounds=${2:-5}
command -v bwrap >/dev/null || { echo "needs bubblewrap (apt-get install bubblewrap)" >&2; exit 2; }
cargo build --release --locked -q
. bench/lib.sh
bench_workdir bench
# Installed copies, as an operator runs them (and as bwrap is: a packaged binary). The
# linker's own output file is slower to exec (here 0.3 ms per launch, measured interleaved
# against a byte-identical `cp` of it on the same filesystem, docs/benchmarks.md): how its
# pages sit in the page cache after the linker wrote it, not anything of Bulwark's.
mkdir "$work/bin"
install -m 0755 target/release/bulwark target/release/bulwark-sandbox "$work/bin/"
bin=$work/bin/bulwark
printf 'version = 1\nname = "noop"\n[[steps]]\nname = "noop"\nrun = "true"\n' > "$work/noop.toml"
mkdir -p "$work/outs"

echo "machine: $(nproc) vCPU, $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r), $(id -un)"
python3 - "$work" "$bin" "$runs" "$rounds" <<'PY'
import os, shutil, statistics, sys, tempfile, time
work, bin, runs, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cfg = f"{work}/config.toml"
cmds = {
    "floor": ["/bin/true"],
    "bwrap": ["bwrap", "--unshare-all", "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
              "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--proc", "/proc",
              "--dev", "/dev", "/bin/true"],
    "exec": [bin, "exec", "--config", cfg, "--", "/bin/true"],
    "run": [bin, "run", "-q", "--config", cfg, "--out", "OUT", f"{work}/noop.toml"],
}
cmds["bwrap"][0] = shutil.which("bwrap") or sys.exit("bwrap not found on PATH")
null = os.open("/dev/null", os.O_WRONLY)
times = {k: [] for k in cmds}
def once(argv):
    t0 = time.monotonic_ns()
    pid = os.posix_spawn(argv[0], argv, os.environ,
                         file_actions=[(os.POSIX_SPAWN_DUP2, null, 1), (os.POSIX_SPAWN_DUP2, null, 2)])
    _, st = os.waitpid(pid, 0)
    dt = (time.monotonic_ns() - t0) / 1e6
    if st != 0:
        sys.exit(f"{' '.join(argv)}: exit status {st}")
    return dt
warmup = 10
names = list(cmds)
for i in range(warmup + runs):
    # The order rotates each iteration, so that no command always follows the same other one
    # (a kernel cost left by one, such as deferred cleanup, would always land on the next).
    for name in names[i % len(names):] + names[:i % len(names)]:
        argv = cmds[name]
        if name == "run":
            out = tempfile.mkdtemp(dir=f"{work}/outs")
            argv = [out if a == "OUT" else a for a in argv]
        dt = once(argv)
        if i >= warmup:
            times[name].append(dt)
def pct(xs, p):
    xs = sorted(xs); k = (len(xs) - 1) * p; f = int(k); c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)
rounds = max(1, min(rounds, runs))
ratios = {"exec": [], "run": []}
for r in range(rounds):
    block = slice(r * runs // rounds, (r + 1) * runs // rounds)
    bw = statistics.median(times["bwrap"][block])
    for k in ratios:
        ratios[k].append(statistics.median(times[k][block]) / bw)
bw = statistics.median(times["bwrap"])
print(f"\n{'what':<8}{'median ms':>11}{'p95 ms':>9}{'x bwrap':>9}   per-block ratio: median (min-max) over {rounds} blocks")
for name in cmds:
    xs = times[name]
    line = f"{name:<8}{statistics.median(xs):>11.2f}{pct(xs, .95):>9.2f}{statistics.median(xs) / bw:>9.2f}"
    if name in ratios:
        rs = ratios[name]
        line += f"   {statistics.median(rs):.2f} ({min(rs):.2f}-{max(rs):.2f})"
    print(line)
PY

for i in $(seq "$runs"); do "$bin" exec --phases --config "$work/config.toml" -- /bin/true 2>>"$work/phases.jsonl" >/dev/null; done

python3 - "$work" <<'PY'
import json, statistics, sys
work = sys.argv[1]
def pct(xs, p):
    xs = sorted(xs); k = (len(xs) - 1) * p; f = int(k); c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)
phases = [json.loads(l) for l in open(f"{work}/phases.jsonl") if l.startswith("{")]
print(f"\nphases of `bulwark exec -- /bin/true` (median over {len(phases)} runs; each from the previous mark)")
order = [k for k, _ in sorted(phases[0].items(), key=lambda kv: kv[1])]
for a, b in zip(order, order[1:]):
    d = [(p[b] - p[a]) / 1e6 for p in phases if a in p and b in p]
    print(f"  {b:<28}{statistics.median(d):>8.2f} ms   p95 {pct(d, .95):>6.2f}")
tot = [(p[order[-1]] - p[order[0]]) / 1e6 for p in phases]
print(f"  {'total (in-process)':<28}{statistics.median(tot):>8.2f} ms")
PY
