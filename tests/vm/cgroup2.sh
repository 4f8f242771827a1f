#!/usr/bin/env bash
# The cgroup v2 pass of the test suite, in the VM of tests/vm/run.sh (only cgroup2 mounted,
# as on current systemd hosts):
#   1. as root: the containment tests that exercise cgroups (limits, counters, killing the
#      whole tree, cleanup after a killed runner) on the v2 path, and `root_v2` (where job
#      cgroups go: inside a cgroup systemd delegated, else under the hierarchy's root);
#   2. as an ordinary user in a cgroup delegated to it the way systemd delegates one
#      (`Delegate=yes`): the `delegated_v2` tests, rootless jobs with real memory and pids
#      limits.
# Needs a built debug tree (scripts/test.sh builds it) and tests/vm/setup.sh done (root).
#
#   tests/vm/cgroup2.sh
#   tests/vm/cgroup2.sh --all    # step 1 runs every containment test instead (about 13 min
#                                # under emulation: the whole battery on a second kernel)
set -euo pipefail
all=0
[[ "${1:-}" == --all ]] && all=1
cd "$(dirname "$0")/../.."
repo=$(pwd)
. tests/vm/lib.sh
script=$repo/target/vm/cgroup2-pass.sh
cat >"$script" <<GUEST
set -euo pipefail
cd "$repo"
# Runs a test binary; fails when it fails, and also when fewer than \$1 tests ran (a filter
# that no longer matches after a rename must not pass as "0 passed").
at_least() {
  local want=\$1; shift
  "\$@" 2>&1 | tee /tmp/vm-tests.log
  local rc=\${PIPESTATUS[0]}
  local ran
  ran=\$(sed -n 's/.*test result: [^.]*\. \([0-9]*\) passed.*/\1/p' /tmp/vm-tests.log | tail -1)
  if (( rc == 0 && \${ran:-0} < want )); then
    echo "only \${ran:-0} tests ran, expected at least \$want: did a test filter stop matching?"
    return 1
  fi
  return "\$rc"
}
echo "== cgroup v2 (VM), as root"
if [[ $all == 1 ]]; then
  at_least 25 "$containment" --test-threads=2 --skip rootless_mode:: --skip delegated_v2:: \\
    --skip missing_layers::
else
  at_least 10 "$containment" --test-threads=2 --skip rootless_mode:: --skip delegated_v2:: \\
    root_mode:: root_v2:: killing_bulwark_run double_forked step_past_its_timeout
fi

echo "== cgroup v2 (VM), as an ordinary user in a delegated cgroup"
user=bulwark-rootless
id -u "\$user" >/dev/null 2>&1 || useradd --no-create-home --shell /bin/bash "\$user"
# A subordinate range for the subuid-mode test (this VM's /etc is an in-memory overlay).
grep -q "^\$user:" /etc/subuid 2>/dev/null && grep -q "^\$user:" /etc/subgid 2>/dev/null \
  || usermod --add-subuids 300000-365535 --add-subgids 300000-365535 "\$user"
mkdir -p "/home/\$user" && chown "\$user" "/home/\$user"
stage=\$(mktemp -d /tmp/bulwark-deleg.XXXXXX)
chmod 0755 "\$stage"
cp "$bindir/bulwark" "$bindir/bulwark-sandbox" "$bindir/bulwark-coordinator" "$containment" "\$stage/"
cp -r examples "\$stage/"
# What systemd does for a unit with Delegate=yes: the cgroup and its procs, subtree_control
# and threads files belong to the user; controllers are enabled from the root down.
cg=/sys/fs/cgroup/delegated
mkdir "\$cg" "\$cg/harness"
echo "+memory +pids +cpu" >/sys/fs/cgroup/cgroup.subtree_control
echo "+memory +pids +cpu" >"\$cg/cgroup.subtree_control"
chown "\$user" "\$cg" "\$cg/cgroup.procs" "\$cg/cgroup.subtree_control" "\$cg/cgroup.threads"
# The test harness waits in a leaf of its own; each test makes a scope beside it.
echo \$\$ >"\$cg/harness/cgroup.procs"
at_least 10 runuser -u "\$user" -- env -i HOME="/home/\$user" PATH=/usr/bin:/bin \\
  BULWARK_BIN="\$stage/bulwark" BULWARK_REPO="\$stage" BULWARK_TEST_DELEGATED_CGROUP="\$cg" \\
  "\$stage/$(basename "$containment")" --test-threads=2 delegated_v2:: </dev/null
GUEST
exec tests/vm/run.sh "$script"
