#!/usr/bin/env bash
# Launch benchmark (issue: sandbox foundation).
#
# Paired in one run, median and p95 over RUNS runs each:
#   floor   plain fork/exec of /bin/true
#   bwrap   Debian's bubblewrap with --unshare-all (no cgroups, no Landlock, no seccomp)
#   exec    bulwark exec -- /bin/true: every layer on, including the job's cgroup creation,
#           migration and removal, from exec of the bulwark binary to reap
#   run     bulwark run of a no-op job (one step `true`, no outputs)
# The runs are split into ROUNDS rounds; each round runs every command back to back (hyperfine,
# after warm-up), so a ratio is computed from measurements taken within the same few seconds,
# and the report gives the median ratio over the rounds and its range, next to the pooled
# medians. Then per-phase medians of `bulwark exec --phases` over RUNS runs.
#
# Usage: bench/launch.sh [RUNS] [ROUNDS]   (as root for the per-job uid and cgroup path)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-200}
rounds=${2:-5}
per=$(( (runs + rounds - 1) / rounds ))
command -v hyperfine >/dev/null && command -v bwrap >/dev/null || {
  echo "needs hyperfine and bubblewrap (apt-get install hyperfine bubblewrap)" >&2; exit 2; }
cargo build --release --locked -q
bin=$PWD/target/release/bulwark
. bench/lib.sh
bench_workdir bench
printf 'version = 1\nname = "noop"\n[[steps]]\nname = "noop"\nrun = "true"\n' > "$work/noop.toml"
mkdir -p "$work/outs"

echo "machine: $(nproc) vCPU, $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r), $(id -un)"
for r in $(seq "$rounds"); do
  hyperfine -N --warmup 10 --runs "$per" --export-json "$work/hf.$r.json" \
    -n floor '/bin/true' \
    -n bwrap 'bwrap --unshare-all --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib --symlink usr/lib64 /lib64 --proc /proc --dev /dev /bin/true' \
    -n exec "$bin exec --config $work/config.toml -- /bin/true" \
    -n run "bash -c 'd=\$(mktemp -d -p $work/outs); exec $bin run -q --config $work/config.toml --out \$d $work/noop.toml 2>/dev/null'" \
    -n wrapper "bash -c 'd=\$(mktemp -d -p $work/outs); exec /bin/true'" \
    >/dev/null
  rm -rf "$work/outs" && mkdir "$work/outs"
done

for i in $(seq "$runs"); do "$bin" exec --phases --config "$work/config.toml" -- /bin/true 2>>"$work/phases.jsonl" >/dev/null; done

python3 - "$work" "$rounds" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
def pct(xs, p):
    xs = sorted(xs); k = (len(xs) - 1) * p; f = int(k); c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)
pooled = {}
ratios = {"exec": [], "run": []}
for r in range(1, rounds + 1):
    res = {x["command"]: [t * 1000 for t in x["times"]] for x in json.load(open(f"{work}/hf.{r}.json"))["results"]}
    # `run` is wrapped in bash (for a fresh --out each time); the wrapper's median is subtracted.
    res["run"] = [t - statistics.median(res["wrapper"]) for t in res["run"]]
    bw = statistics.median(res["bwrap"])
    for k in ratios:
        ratios[k].append(statistics.median(res[k]) / bw)
    for k, v in res.items():
        pooled.setdefault(k, []).extend(v)
bw = statistics.median(pooled["bwrap"])
print(f"\n{'what':<8}{'median ms':>11}{'p95 ms':>9}{'x bwrap':>9}   per-round ratio: median (min-max) over {rounds} rounds")
for name in ["floor", "bwrap", "exec", "run"]:
    xs = pooled[name]
    line = f"{name:<8}{statistics.median(xs):>11.2f}{pct(xs, .95):>9.2f}{statistics.median(xs) / bw:>9.2f}"
    if name in ratios:
        rs = ratios[name]
        line += f"   {statistics.median(rs):.2f} ({min(rs):.2f}-{max(rs):.2f})"
    print(line)
print(f"(run: minus the bash/mktemp wrapper, median {statistics.median(pooled['wrapper']):.2f} ms)")
phases = [json.loads(l) for l in open(f"{work}/phases.jsonl") if l.startswith("{")]
print(f"\nphases of `bulwark exec -- /bin/true` (median over {len(phases)} runs; each from the previous mark)")
order = [k for k, _ in sorted(phases[0].items(), key=lambda kv: kv[1])]
for a, b in zip(order, order[1:]):
    d = [(p[b] - p[a]) / 1e6 for p in phases if a in p and b in p]
    print(f"  {b:<28}{statistics.median(d):>8.2f} ms   p95 {pct(d, .95):>6.2f}")
tot = [(p[order[-1]] - p[order[0]]) / 1e6 for p in phases]
print(f"  {'total (in-process)':<28}{statistics.median(tot):>8.2f} ms")
PY
