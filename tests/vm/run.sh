#!/usr/bin/env bash
# Runs a bash script as root in the cgroup v2 test VM (prepared by tests/vm/setup.sh): the
# host's own root, read-only under a writable overlay in the VM's memory, so the script sees
# this checkout and its built binaries at the same paths and nothing it writes reaches the
# host; /run is the VM's own; only cgroup2 is mounted. Exits
# with the script's status; 125 when the VM could not run it.
#
#   tests/vm/run.sh SCRIPT            # SCRIPT: a file, read by the VM at boot
#
# Software emulation (TCG; these machines have no nested virtualisation): the kernel boots in
# about 3 s, and what runs inside is 10-30 times slower than on the host. Give up after
# $BULWARK_VM_TIMEOUT seconds (default 1200). $BULWARK_VM_APPEND adds kernel parameters
# (tests/vm/missing-layers.sh boots without Landlock that way).
set -euo pipefail
dir=${BULWARK_VM_DIR:-/var/cache/bulwark-vm}
script=$(readlink -f "$1")
here=$(cd "$(dirname "$0")" && pwd)
for f in vmlinuz initrd.gz; do
  [[ -f "$dir/$f" ]] || { echo "tests/vm/run.sh: $dir/$f missing (run tests/vm/setup.sh as root)" >&2; exit 125; }
done
# Both paths travel on the kernel command line, which splits at whitespace.
for p in "$script" "$here"; do
  case "$p" in *[[:space:]]*)
    echo "tests/vm/run.sh: '$p' holds whitespace, which the kernel command line cannot carry; use a path without" >&2; exit 125 ;;
  esac
done
case "$script" in /run/*)
  echo "tests/vm/run.sh: $script is under /run, which the VM starts empty; put it elsewhere" >&2; exit 125 ;;
esac
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The guest reports its status under a name made for this run, which nothing the script
# prints can forge.
token=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
# The console carries the script's output; the kernel's own messages are kept to errors.
timeout --foreground "${BULWARK_VM_TIMEOUT:-1200}" qemu-system-x86_64 \
  -accel tcg,thread=multi -cpu max -smp 2 -m 3072 \
  -nographic -monitor none -no-reboot -nic none \
  -kernel "$dir/vmlinuz" -initrd "$dir/initrd.gz" \
  -append "console=ttyS0 loglevel=3 panic=-1 bulwark.init=$here/guest-init.sh bulwark.cmd=$script bulwark.token=$token ${BULWARK_VM_APPEND:-}" \
  -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap \
  </dev/null 2>&1 | tr -d '\r' | tee "$log" | sed -n '/bulwark-vm: /,$p' \
  | sed -e 's/^.*\(bulwark-vm: \)/\1/' | grep -v -e "bulwark-vm-exit-$token=" -e 'sysrq: Power Off' -e 'reboot: Power down' || true
status=$(sed -n "s/^.*bulwark-vm-exit-$token=\([0-9]*\).*\$/\1/p" "$log" | tail -1)
if [[ -z "$status" ]]; then
  echo "tests/vm/run.sh: the VM ended without reporting a status; its console:" >&2
  tail -40 "$log" >&2
  exit 125
fi
exit "$status"
