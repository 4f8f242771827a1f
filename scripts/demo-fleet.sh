#!/usr/bin/env bash
# The control plane end to end on one machine (docs/control-plane.md):
#   1. builds bulwark and bulwark-coordinator (release);
#   2. starts a coordinator on loopback with a fresh state (issuer key, admin token);
#   3. makes a git repository of examples/hello (the job's source, pinned by commit);
#   4. registers this host with a one-time token (`bulwark register`) and starts `bulwark daemon`;
#   5. queues the hello job as trusted (`bulwark-coordinator jobs submit`), as a CI system would;
#   6. follows the job's log as the daemon sends it (`jobs log --follow`), then reads the
#      result, fetches the artifact and its provenance from the coordinator
#      (the daemon uploaded both) and checks them with `bulwark verify`, with a policy that
#      requires a trusted build from that repository's main branch;
#   7. asks the coordinator's inventory which artifacts the commit built;
#   8. stops the daemon (SIGTERM) and the coordinator.
#
#   ./scripts/demo-fleet.sh            # everything in a new directory under ${TMPDIR:-/tmp}
#
# Run it as root for the full sandbox; as an ordinary user, BULWARK_DEMO_RLIMIT_FALLBACK=1 as
# for scripts/demo.sh. Needs cargo, git, curl and python3 (for JSON). Exits non-zero if any
# stage fails.
set -euo pipefail
cd "$(dirname "$0")/.."
repo_root=$(pwd)
say() { printf '\n== %s\n' "$*"; }
for tool in cargo git curl python3; do
  command -v "$tool" >/dev/null || { echo "$tool not found: install it and run again" >&2; exit 1; }
done

say "cargo build --release"
cargo build --release --locked -p bulwark-runner -p bulwark-sandbox -p bulwark-coordinator
bulwark=$repo_root/target/release/bulwark
coordinator=$repo_root/target/release/bulwark-coordinator

work=$(mktemp -d "${TMPDIR:-/tmp}/bulwark-fleet.XXXXXX")
chmod 0755 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
echo "working in $work"

say "coordinator: init and serve on 127.0.0.1"
"$coordinator" init --state "$work/coordinator" --issuer https://ci.example.test
"$coordinator" serve --state "$work/coordinator" --listen 127.0.0.1:0 2>"$work/coordinator.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "^listening on" "$work/coordinator.log" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$work/coordinator.log" | head -1)
[[ -n "$addr" ]] || { cat "$work/coordinator.log" >&2; exit 1; }
url=http://$addr
echo "coordinator at $url"
printf 'Authorization: Bearer %s\n' "$(cat "$work/coordinator/admin.token")" >"$work/admin.header"
chmod 0600 "$work/admin.header"

say "the job's source: a git repository of examples/hello"
src=$work/hello.git
mkdir "$src"
cp examples/hello/Makefile examples/hello/hello.c "$src/"
git -C "$src" -c init.defaultBranch=main init -q
git -C "$src" add .
git -C "$src" -c user.name=demo -c user.email=demo@example.invalid commit -qm "hello"
commit=$(git -C "$src" rev-parse HEAD)
echo "commit $commit"

say "this host: configuration, registration, daemon"
fallback=""
[[ "${BULWARK_DEMO_RLIMIT_FALLBACK:-0}" == 1 ]] && fallback="allow_rlimit_fallback = true"
cat >"$work/config.toml" <<EOF
builder_id = "https://ci.example.test/bulwark/demo-pool"
[limits]
$fallback
[paths]
state_dir = "$work/host-state"
runtime_dir = "$work/host-run"
[fetch]
file_roots = ["$work"]
[daemon]
poll_interval = "500ms"
EOF
"$coordinator" registration-token --state "$work/coordinator" --ttl 10m >"$work/reg-token"
"$bulwark" register --coordinator "$url" --token-file "$work/reg-token" --name demo-host --config "$work/config.toml"
"$bulwark" daemon --config "$work/config.toml" 2>"$work/daemon.log" &
daemon=$!
pids+=("$daemon")

say "queue the hello job as trusted (what a CI system does on a push to main)"
# The hello job with its source pinned to the repository's commit. A CI system would POST the
# same spec, as JSON, to $url/v1/jobs with the admin token (docs/control-plane.md, "Jobs").
sed -e "s|^path = \"\\.\".*|git = \"file://$src\"\\ncommit = \"$commit\"\\nref = \"refs/heads/main\"|" \
  examples/hello/job.toml >"$work/hello.toml"
job=$("$coordinator" jobs submit --state "$work/coordinator" --trust trusted "$work/hello.toml")
echo "queued $job"

say "follow the job's log as it runs (bulwark-coordinator jobs log --follow)"
"$coordinator" jobs log --state "$work/coordinator" --follow "$job" || true

say "the result"
for _ in $(seq 600); do
  curl -sS -H @"$work/admin.header" "$url/v1/jobs/$job" >"$work/job.json"
  state=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["state"])' "$work/job.json")
  [[ "$state" == finished || "$state" == lost ]] && break
  sleep 0.5
done
python3 - "$work/job.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
r = j.get("result") or {}
res = r.get("result", {})
print(f"state {j['state']}, status {res.get('status')}, trust {res.get('trust')}, runner {j.get('runner_id')}")
for o in res.get("outputs", []):
    print(f"output {o['path']} sha256 {o['sha256']}")
if res.get("status") != "succeeded" or not r.get("provenance"):
    sys.exit(f"the job did not succeed: {res.get('reason')}")
PY

say "fetch the artifact and its provenance from the coordinator"
curl -sSf -H @"$work/admin.header" "$url/v1/jobs/$job/outputs/dist/hello.tar.gz" -o "$work/hello.tar.gz"
curl -sSf -H @"$work/admin.header" "$url/v1/jobs/$job/provenance" -o "$work/provenance.intoto.jsonl"
sha256sum "$work/hello.tar.gz"

say "bulwark verify: the provenance covers the artifact, both as the coordinator serves them"
cat >"$work/policy.toml" <<EOF
builder_ids = ["https://ci.example.test/bulwark/demo-pool"]
source_uris = ["file://$src"]
source_refs = ["refs/heads/main"]
require_trust = "trusted"
EOF
[[ -n "$fallback" ]] && echo "forbid_weakened = false" >>"$work/policy.toml"
"$bulwark" verify --provenance "$work/provenance.intoto.jsonl" --key "$work/host-state/keys/signing.pub" \
  --policy "$work/policy.toml" "$work/hello.tar.gz"

say "incident response: which artifacts did this commit build? (bulwark-coordinator inventory query)"
"$coordinator" inventory query --state "$work/coordinator" --commit "${commit:0:12}"

say "stop the daemon (SIGTERM) and the coordinator"
kill -TERM "$daemon"
wait "$daemon"
echo "daemon stopped; everything is in $work"
