#!/usr/bin/env bash
# Runs the demo job end to end on a fresh Debian (or Ubuntu) machine:
#   1. installs gcc and make if they are missing (needs root for apt-get);
#   2. builds Bulwark (release);
#   3. `bulwark probe`: which isolation layers this host can enforce;
#   4. `bulwark run examples/hello/job.toml` into a fresh output directory;
#   5. prints result.json and checks the output's sha256 against it with sha256sum;
#   6. `bulwark verify`: the signed provenance (with a key made by `bulwark keygen`) covers it.
#   7. `bulwark inventory query`: the host's inventory, which every signed run is added to,
#      says where the artifact comes from.
#
#   ./scripts/demo.sh            # output in a new directory under ${TMPDIR:-/tmp}
#   ./scripts/demo.sh OUT_DIR    # output in OUT_DIR (must be absent or empty)
#
# Run it as root for the full sandbox (a per-job host uid, cgroup limits). As an ordinary user
# Bulwark runs rootless and refuses jobs where it cannot create cgroups; to see the demo run
# anyway with rlimits instead of cgroups (a weakening that result.json records), use
#   BULWARK_DEMO_RLIMIT_FALLBACK=1 ./scripts/demo.sh
#
# Needs a Rust toolchain (cargo, 1.85 or newer; https://rustup.rs). The final check uses only
# grep, sed and sha256sum (no jq or python). Exits non-zero if any stage fails.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

say "build tools for the demo job (gcc, make)"
missing=()
command -v gcc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v make >/dev/null 2>&1 || missing+=(make)
if ((${#missing[@]})); then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing: ${missing[*]}; install them (as root: apt-get install ${missing[*]}) and run again" >&2
    exit 1
  fi
else
  echo "gcc and make present"
fi
command -v cargo >/dev/null 2>&1 || {
  echo "cargo not found: install Rust 1.85 or newer (https://rustup.rs) and run again" >&2
  exit 1
}

say "cargo build --release"
# The sandbox helper is a binary of its own, beside bulwark (one build: they check each other).
cargo build --release --locked -p bulwark-runner -p bulwark-sandbox
bulwark=target/release/bulwark

say "bulwark probe"
# Exit 1 means degraded; `run` below decides whether the job can run, so do not stop here.
"$bulwark" probe || echo "(probe reports degraded isolation; bulwark run refuses a job it cannot isolate)"

out=${1:-$(mktemp -d "${TMPDIR:-/tmp}/bulwark-demo.XXXXXX")}
config=()
if [[ "${BULWARK_DEMO_RLIMIT_FALLBACK:-0}" == 1 ]]; then
  # An explicit operator choice, never a default: memory and pids bounded by rlimits only.
  demo_config=$(mktemp "${TMPDIR:-/tmp}/bulwark-demo-config.XXXXXX")
  trap 'rm -f "$demo_config"' EXIT
  printf '[limits]\nallow_rlimit_fallback = true\n' > "$demo_config"
  config=(--config "$demo_config")
  echo "BULWARK_DEMO_RLIMIT_FALLBACK=1: allowing rlimit fallback where cgroups are unavailable"
fi
keys=$(mktemp -d "${TMPDIR:-/tmp}/bulwark-demo-keys.XXXXXX")
say "bulwark keygen --out $keys"
"$bulwark" keygen --out "$keys"
say "bulwark run examples/hello/job.toml --key $keys/signing.key --out $out"
status=0
"$bulwark" run examples/hello/job.toml "${config[@]}" --key "$keys/signing.key" --out "$out" || status=$?
if ((status != 0)); then
  echo "bulwark run exited $status (1: a step failed; 2: refused before any step ran; 3: runner error)" >&2
  if ((status == 2)) && [[ "$(id -u)" != 0 ]]; then
    echo "as an ordinary user without writable cgroups, run as root, or see BULWARK_DEMO_RLIMIT_FALLBACK above" >&2
  fi
  [[ -f "$out/result.json" ]] && cat "$out/result.json" >&2
  exit "$status"
fi

say "$out/result.json"
cat "$out/result.json"
echo

say "sha256 of the output, checked against result.json"
recorded=$(grep -A3 '"path": "dist/hello.tar.gz"' "$out/result.json" \
  | sed -n 's/.*"sha256": "\([0-9a-f]\{64\}\)".*/\1/p')
if [[ -z "$recorded" ]]; then
  echo "result.json records no sha256 for dist/hello.tar.gz" >&2
  exit 1
fi
(cd "$out" && echo "$recorded  dist/hello.tar.gz" | sha256sum --check --strict)

say "bulwark verify: the signed provenance covers the artifact"
verify_policy=()
if [[ "${BULWARK_DEMO_RLIMIT_FALLBACK:-0}" == 1 ]]; then
  # The fallback is a recorded weakening, which the default policy rejects; say it allows it.
  printf 'forbid_weakened = false\n' > "$keys/policy.toml"
  verify_policy=(--policy "$keys/policy.toml")
fi
"$bulwark" verify --provenance "$out/provenance.sigstore.json" --key "$keys/signing.pub" "${verify_policy[@]}" "$out/dist/hello.tar.gz"

say "bulwark inventory query --digest <its sha256>: where it comes from"
"$bulwark" inventory query "${config[@]}" --digest "$recorded"

say "done: the job's outputs, log, result and provenance are in $out"
ls -l "$out" "$out/dist"
