#!/usr/bin/env bash
# The whole Bulwark test suite: unit and integration tests as the current user (root in CI);
# as root, two passes in a VM (tests/vm/cgroup2.sh: cgroup v2, which these hosts lack;
# tests/vm/missing-layers.sh: a kernel without Landlock) and the rootless path as an ordinary
# user this script creates.
#
#   ./scripts/test.sh            # run everything
#   BULWARK_SKIP_ROOTLESS=1 ...  # skip the ordinary-user pass
#   BULWARK_SKIP_VM=1 ...        # skip the VM passes (reported as skipped, never passed)
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== build"
cargo build --workspace --all-targets --locked
echo "== tests as $(id -un)"
if [[ "$(id -u)" == 0 ]]; then mode_skip=rootless_mode::; else mode_skip=root_mode::; fi
# delegated_v2, root_v2, missing_layers: only the VM passes can run those (below).
cargo test --workspace --locked -- --test-threads=2 --skip "$mode_skip" --skip delegated_v2:: --skip root_v2:: --skip missing_layers::

if [[ "$(id -u)" != 0 ]]; then
  echo "== VM passes (cgroup v2, no Landlock) SKIPPED: need root (qemu with the host's root shared)"
elif [[ "${BULWARK_SKIP_VM:-0}" == 1 ]]; then
  echo "== VM passes (cgroup v2, no Landlock) SKIPPED: BULWARK_SKIP_VM=1"
elif [[ ! -f "${BULWARK_VM_DIR:-/var/cache/bulwark-vm}/vmlinuz" ]] || ! command -v qemu-system-x86_64 >/dev/null; then
  echo "== VM passes (cgroup v2, no Landlock) SKIPPED: the test VM is not prepared (run tests/vm/setup.sh as root; .ci/run does)"
else
  echo "== cgroup v2 pass (VM with only cgroup2 mounted)"
  tests/vm/cgroup2.sh
  echo "== fail-closed pass (VM booted without Landlock)"
  tests/vm/missing-layers.sh
fi

if [[ "$(id -u)" != 0 || "${BULWARK_SKIP_ROOTLESS:-0}" == 1 ]]; then
  echo "== rootless pass skipped (needs root to create the test user, or BULWARK_SKIP_ROOTLESS=1)"
  exit 0
fi

echo "== tests as an ordinary user (rootless mode)"
user=bulwark-rootless
id -u "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
# Its subuid-mode tests need a subordinate range (useradd grants one where /etc/subuid exists;
# granted here otherwise, from the first range no entry uses) and newuidmap (package uidmap).
if ! grep -q "^$user:" /etc/subuid 2>/dev/null || ! grep -q "^$user:" /etc/subgid 2>/dev/null; then
  first=$(cat /etc/subuid /etc/subgid 2>/dev/null | awk -F: 'BEGIN {m = 100000} $2 + $3 > m {m = $2 + $3} END {print m}')
  usermod --add-subuids "$first-$((first + 65535))" --add-subgids "$first-$((first + 65535))" "$user"
fi
command -v newuidmap >/dev/null || { echo "newuidmap missing: apt install uidmap (.ci/run does)" >&2; exit 1; }
stage=$(mktemp -d /tmp/bulwark-rootless.XXXXXX)
chmod 0755 "$stage"
cp target/debug/bulwark target/debug/bulwark-sandbox target/debug/bulwark-coordinator "$stage/"
# Integration test binaries of the tests crate, listed by cargo itself.
cargo test -p bulwark-tests --locked --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])' > "$stage/tests.txt"
cp -r agent-protocol/tests/bad-specs examples tests/golden "$stage/"
# The interop verifiers' driver scripts (the verifiers themselves: tests/interop/setup.sh).
mkdir "$stage/interop"
cp tests/interop/*.py tests/interop/*.mjs "$stage/interop/"
status=0
while read -r t; do
  cp "$t" "$stage/"
  name=$(basename "$t")
  echo "-- $name as $user"
  runuser -u "$user" -- env -i HOME="/home/$user" PATH=/usr/bin:/bin \
    BULWARK_BIN="$stage/bulwark" BULWARK_REPO="$stage" \
    "$stage/$name" --test-threads=2 --skip root_mode:: --skip delegated_v2:: --skip root_v2:: --skip missing_layers:: < /dev/null || status=1
done < "$stage/tests.txt"
rm -rf "$stage"
exit $status
