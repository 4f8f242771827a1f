#!/usr/bin/env bash
# Launch benchmark (issue: sandbox foundation).
#
# Paired in one run, 200+ runs each, median and p95:
#   floor   plain fork/exec of /bin/true
#   bwrap   Debian's bubblewrap with --unshare-all (no cgroups, no Landlock, no seccomp)
#   exec    bulwark exec -- /bin/true: every layer on, including the job's cgroup creation,
#           migration and removal, from exec of the bulwark binary to reap
#   run     bulwark run of a no-op job (one step `true`, no outputs)
# Then per-phase medians of `bulwark exec --phases` over the same number of runs.
#
# Usage: bench/launch.sh [RUNS]   (as root for the per-job uid and cgroup path)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-200}
command -v hyperfine >/dev/null && command -v bwrap >/dev/null || {
  echo "needs hyperfine and bubblewrap (apt-get install hyperfine bubblewrap)" >&2; exit 2; }
cargo build --release --locked -q
bin=$PWD/target/release/bulwark
work=$(mktemp -d /tmp/bulwark-bench.XXXXXX)
chmod 0755 "$work"
trap 'rm -rf "$work"' EXIT
cat > "$work/config.toml" <<TOML
[limits]
$( [[ $(id -u) != 0 ]] && echo 'allow_rlimit_fallback = true' )
[paths]
state_dir = "$work/state"
runtime_dir = "$work/run"
TOML
printf 'version = 1\nname = "noop"\n[[steps]]\nname = "noop"\nrun = "true"\n' > "$work/noop.toml"
mkdir -p "$work/outs"

echo "machine: $(nproc) vCPU, $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r), $(id -un)"
hyperfine -N --warmup 10 --runs "$runs" --export-json "$work/hf.json" \
  -n floor '/bin/true' \
  -n bwrap 'bwrap --unshare-all --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib --symlink usr/lib64 /lib64 --proc /proc --dev /dev /bin/true' \
  -n exec "$bin exec --config $work/config.toml -- /bin/true" \
  -n run "bash -c 'd=\$(mktemp -d -p $work/outs); exec $bin run -q --config $work/config.toml --out \$d $work/noop.toml 2>/dev/null'" \
  >/dev/null
# `run` is wrapped in bash (for a fresh --out each time); measure that wrapper alone to subtract it.
hyperfine -N --warmup 10 --runs "$runs" --export-json "$work/wrap.json" \
  -n wrapper "bash -c 'd=\$(mktemp -d -p $work/outs); exec /bin/true'" >/dev/null

for i in $(seq "$runs"); do "$bin" exec --phases --config "$work/config.toml" -- /bin/true 2>>"$work/phases.jsonl" >/dev/null; done

python3 - "$work/hf.json" "$work/wrap.json" "$work/phases.jsonl" <<'PY'
import json, statistics, sys
def pct(xs, p):
    xs = sorted(xs); k = (len(xs) - 1) * p; f = int(k); c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)
res = {r["command"]: [t * 1000 for t in r["times"]] for r in json.load(open(sys.argv[1]))["results"]}
wrap = [t * 1000 for t in json.load(open(sys.argv[2]))["results"][0]["times"]]
res["run"] = [t - statistics.median(wrap) for t in res["run"]]
bw = statistics.median(res["bwrap"])
print(f"\n{'what':<8}{'median ms':>11}{'p95 ms':>9}{'x bwrap':>9}")
for name in ["floor", "bwrap", "exec", "run"]:
    xs = res[name]
    print(f"{name:<8}{statistics.median(xs):>11.2f}{pct(xs, .95):>9.2f}{statistics.median(xs) / bw:>9.2f}")
print(f"(run: minus the bash/mktemp wrapper, median {statistics.median(wrap):.2f} ms)")
phases = [json.loads(l) for l in open(sys.argv[3]) if l.startswith("{")]
order = ["runner-start", "runner-workspace", "runner-cgroup-created", "runner-helper-spawned", "helper-read-spec",
         "helper-cgroup-and-ids", "helper-namespaces-and-maps", "init-root-built", "init-step-fork", "job-exec",
         "init-step-reaped", "runner-helper-reaped", "runner-cgroup-removed", "runner-end"]
print(f"\nphases of `bulwark exec -- /bin/true` (median over {len(phases)} runs; from the previous mark)")
for a, b in zip(order, order[1:]):
    d = [(p[b] - p[a]) / 1e6 for p in phases if a in p and b in p]
    print(f"  {b:<28}{statistics.median(d):>8.2f} ms   p95 {pct(d, .95):>6.2f}")
tot = [(p["runner-end"] - p["runner-start"]) / 1e6 for p in phases]
print(f"  {'total (in-process)':<28}{statistics.median(tot):>8.2f} ms")
PY
