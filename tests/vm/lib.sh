# Shared by the VM passes (sourced, from the repository root): builds the tree and sets
# $containment to the containment test executable and $bindir to where the binaries under
# test sit beside it (target/<profile>/).
cargo build --workspace --all-targets --locked -q
containment=$(cargo test -p bulwark-tests --test containment --locked --no-run --message-format=json \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])')
[[ -x "$containment" ]] || { echo "tests/vm: the containment tests were not built" >&2; exit 1; }
bindir=$(dirname "$(dirname "$containment")")
mkdir -p target/vm
