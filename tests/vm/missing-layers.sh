#!/usr/bin/env bash
# The fail-closed pass: the test VM of tests/vm/run.sh booted with Landlock left out of the
# kernel's LSM list (lsm=capability,yama), where the `missing_layers` tests run as root: every
# job is refused before any step runs, naming the layer, and `bulwark probe` says what is
# missing; the same with user namespaces switched off (user.max_user_namespaces = 0).
# Needs a built debug tree and tests/vm/setup.sh done (root).
#
#   tests/vm/missing-layers.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
. tests/vm/lib.sh
script=$repo/target/vm/missing-layers-pass.sh
cat >"$script" <<GUEST
set -euo pipefail
cd "$repo"
echo "== no Landlock in the kernel (VM, lsm=\$(cat /sys/kernel/security/lsm)), as root"
"$containment" --test-threads=1 missing_layers:: 2>&1 | tee /tmp/vm-tests.log
ran=\$(sed -n 's/.*test result: ok\. \([0-9]*\) passed.*/\1/p' /tmp/vm-tests.log | tail -1)
if (( \${ran:-0} < 2 )); then echo "only \${ran:-0} tests ran, expected 2"; exit 1; fi
GUEST
BULWARK_VM_APPEND="lsm=capability,yama" exec tests/vm/run.sh "$script"
