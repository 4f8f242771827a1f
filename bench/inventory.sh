#!/usr/bin/env bash
# How fast `bulwark inventory query` answers "which artifacts used this?" over a large index.
#
# Writes an index of RECORDS statements shaped like real ones (a git source, three pinned
# tools, the two runner binaries, two artifacts each; one tool digest shared by every 1000th
# statement, a commit by one), then times, best of 5 each, in the same run:
#   digest   bulwark inventory query --digest <the shared tool digest>
#   commit   bulwark inventory query --commit <7-digit prefix of the one commit>
#   all      bulwark inventory query --json     (every artifact, every line parsed)
#   grep     grep -c <the digest> index          (the floor: reading the file, no parsing)
#
# Usage: bench/inventory.sh [RECORDS]   (default 200000)
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-200000}
cargo build --release --locked -q
bin=$PWD/target/release/bulwark
work=$(mktemp -d /tmp/bulwark-inventory-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
python3 - "$work/index.jsonl" "$records" <<'PY'
import hashlib, json, sys
path, n = sys.argv[1], int(sys.argv[2])
h = lambda s: hashlib.sha256(s.encode()).hexdigest()
shared = h("compromised-tool")
with open(path, "w") as f:
    for i in range(n):
        tools = [{"name": f"tool{t}", "uri": f"https://tools.example/tool{t}-{i % 50}.tar.gz",
                  "digest": {"sha256": shared if (t == 0 and i % 1000 == 0) else h(f"t{t}-{i % 50}-{i}")}}
                 for t in range(3)]
        commit = "0123456789abcdef0123456789abcdef01234567" if i == n // 2 else h(f"c{i}")[:40]
        deps = [{"name": "source", "uri": f"git+https://git.example/app{i % 20}.git@refs/heads/main",
                 "digest": {"gitCommit": commit}}] + tools + [
                {"name": "bulwark", "uri": "pkg:cargo/bulwark-runner@0.1.0", "digest": {"sha256": h("runner")}, "builder": True},
                {"name": "bulwark-sandbox", "uri": "pkg:cargo/bulwark-sandbox@0.1.0", "digest": {"sha256": h("sandbox")}, "builder": True}]
        rec = {"statement_sha256": h(f"s{i}"), "provenance": f"/srv/provenance/{i}/provenance.intoto.jsonl",
               "invocation_id": h(f"i{i}")[:32], "finished": "2026-11-26T10:00:00Z",
               "builder_id": "https://ci.example.com/bulwark/pool-a", "trust": "trusted",
               "dependencies": deps,
               "subjects": [{"name": f"dist/app-{i}.tar.gz", "sha256": h(f"a{i}")},
                            {"name": f"dist/app-{i}.sha256", "sha256": h(f"b{i}")}]}
        f.write(json.dumps(rec, separators=(",", ":")) + "\n")
print(f"index: {n} statements, {sum(1 for _ in open(path))} lines")
PY
ls -l --block-size=M "$work/index.jsonl" | awk '{print "size: " $5}'
shared=$(printf %s compromised-tool | sha256sum | cut -d' ' -f1)
echo "machine: $(nproc) vCPU, kernel $(uname -r); index in the page cache"
python3 - "$bin" "$work/index.jsonl" "$shared" <<'PY'
import subprocess, sys, time
bin, index, shared = sys.argv[1:]
cmds = {
    "digest": [bin, "inventory", "query", "--index", index, "--digest", shared],
    "commit": [bin, "inventory", "query", "--index", index, "--commit", "0123456"],
    "all":    [bin, "inventory", "query", "--index", index, "--json"],
    "grep":   ["grep", "-c", shared, index],
}
best = {}
for name, argv in cmds.items():
    times = []
    for _ in range(5):
        t0 = time.monotonic()
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        times.append(time.monotonic() - t0)
    best[name] = min(times)
    found = out.stdout.decode().count("\n") if name not in ("all", "grep") else None
    extra = f"  ({found} artifact lines)" if found is not None else ""
    print(f"{name:<8}{best[name]*1000:>9.0f} ms{extra}")
print(f"digest / grep: {best['digest'] / best['grep']:.2f}x")
PY
