#!/usr/bin/env bash
# The whole Bulwark test suite: unit and integration tests as the current user (root in CI),
# then the rootless path as an ordinary user this script creates.
#
#   ./scripts/test.sh            # run everything
#   BULWARK_SKIP_ROOTLESS=1 ...  # skip the ordinary-user pass
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== build"
cargo build --workspace --all-targets --locked
echo "== tests as $(id -un)"
if [[ "$(id -u)" == 0 ]]; then mode_skip=rootless_mode::; else mode_skip=root_mode::; fi
cargo test --workspace --locked -- --test-threads=2 --skip "$mode_skip"

if [[ "$(id -u)" != 0 || "${BULWARK_SKIP_ROOTLESS:-0}" == 1 ]]; then
  echo "== rootless pass skipped (needs root to create the test user, or BULWARK_SKIP_ROOTLESS=1)"
  exit 0
fi

echo "== tests as an ordinary user (rootless mode)"
user=bulwark-rootless
id -u "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
stage=$(mktemp -d /tmp/bulwark-rootless.XXXXXX)
chmod 0755 "$stage"
cp target/debug/bulwark target/debug/bulwark-sandbox "$stage/"
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
    "$stage/$name" --test-threads=2 --skip root_mode:: < /dev/null || status=1
done < "$stage/tests.txt"
rm -rf "$stage"
exit $status
