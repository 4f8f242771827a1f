#!/usr/bin/env bash
# Installs the independent verifiers the interoperability tests (tests/tests/interop.rs) run
# over Bulwark's provenance:
#
#   $BULWARK_INTEROP_DIR/venv               Python venv: securesystemslib, in-toto-attestation
#   $BULWARK_INTEROP_DIR/node/node_modules  npm: @sigstore/verify and what it needs
#
# BULWARK_INTEROP_DIR defaults to /opt/bulwark-interop. Everything is made world-readable so
# the rootless pass of scripts/test.sh (an ordinary user, `env -i`) runs the same tools.
# Versions are exact (requirements.txt, package-lock.json). Idempotent: a stamp of the pinned
# files and interpreter versions is written last, and when it matches nothing is done.
#
#   tests/interop/setup.sh            # install or check
#   BULWARK_INTEROP_FORCE=1 ...       # reinstall
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${BULWARK_INTEROP_DIR:-/opt/bulwark-interop}
# Debian's python3: a venv made from a per-user interpreter (pyenv under /root) would not run
# for the unprivileged user of the rootless pass.
python=${BULWARK_INTEROP_PYTHON:-/usr/bin/python3}
node=$(command -v node) || { echo "setup.sh: node not found (install nodejs and npm)" >&2; exit 1; }
command -v npm >/dev/null || { echo "setup.sh: npm not found" >&2; exit 1; }
[[ -x "$python" ]] || { echo "setup.sh: $python not found (install python3 python3-venv)" >&2; exit 1; }

stamp_of() {
  {
    cat "$here/requirements.txt" "$here/package.json" "$here/package-lock.json"
    "$python" --version
    "$node" --version
  } | sha256sum | cut -d' ' -f1
}
want=$(stamp_of)

mkdir -p "$dir"
chmod 0755 "$dir"
exec 9>"$dir/.lock"
flock 9

if [[ "${BULWARK_INTEROP_FORCE:-0}" != 1 && -f "$dir/.stamp" && "$(cat "$dir/.stamp")" == "$want" \
      && -x "$dir/venv/bin/python" && -f "$dir/node/node_modules/@sigstore/verify/package.json" ]]; then
  echo "interop verifiers already installed in $dir"
  exit 0
fi

echo "installing interop verifiers into $dir"
rm -f "$dir/.stamp"
rm -rf "$dir/venv" "$dir/node"

"$python" -m venv "$dir/venv"
"$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
  --require-virtualenv --only-binary=:all: -r "$here/requirements.txt"
# Fail now, not in the tests, if the install is unusable.
"$dir/venv/bin/python" -c 'import securesystemslib.dsse, securesystemslib.signer, in_toto_attestation.v1.statement, in_toto_attestation.predicates.provenance.v1.provenance_pb2, jwt'

mkdir -p "$dir/node"
cp "$here/package.json" "$here/package-lock.json" "$dir/node/"
(cd "$dir/node" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
"$node" -e 'require(process.argv[1] + "/node_modules/@sigstore/verify")' "$dir/node"

chmod -R a+rX "$dir"
echo "$want" >"$dir/.stamp"
chmod 0644 "$dir/.stamp"
echo "interop verifiers installed in $dir"
