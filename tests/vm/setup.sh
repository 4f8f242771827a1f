#!/usr/bin/env bash
# Prepares the cgroup v2 test VM (tests/vm/run.sh): a Debian kernel new enough for every layer
# Bulwark requires (Landlock ABI >= 3: Linux >= 6.2, so bookworm-backports' 6.12 on these
# Debian 12 machines), qemu, and a small initramfs (static busybox and the 9p modules) that
# mounts the host's root read-only over virtio-9p, under a writable overlay in the VM's
# memory, and hands over to tests/vm/guest-init.sh.
#
# Why a VM: the machines this project is tested on are cgroup v1 hybrids (memory and pids are
# bound to v1 hierarchies, so no cgroup2 mount can have them), while most hosts operators run
# today are pure cgroup v2. Only a kernel of its own, which mounts nothing but cgroup2, lets
# the v2 path (limits, cgroup.kill, delegation to an ordinary user) run for real.
#
#   tests/vm/setup.sh          # as root: apt installs, kernel download, initramfs; idempotent
#
# Result, in $BULWARK_VM_DIR (default /var/cache/bulwark-vm): vmlinuz, initrd.gz, kernel.txt.
set -euo pipefail
dir=${BULWARK_VM_DIR:-/var/cache/bulwark-vm}
[[ "$(id -u)" == 0 ]] || { echo "tests/vm/setup.sh: needs root (apt)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

# Prepared by this very script (a changed setup.sh prepares again)?
stamp=$(sha256sum "$0" | cut -d' ' -f1)
if [[ -f "$dir/vmlinuz" && -f "$dir/initrd.gz" && -f "$dir/kernel.txt" ]] \
    && [[ "$(cat "$dir/stamp" 2>/dev/null)" == "$stamp" ]] \
    && command -v qemu-system-x86_64 >/dev/null && command -v busybox >/dev/null; then
  echo "test VM already prepared in $dir ($(cat "$dir/kernel.txt"))"
  exit 0
fi

# bookworm-backports: the 6.12 kernel, and a qemu-system that matches the qemu-utils these
# machines come with (also from backports; bookworm's own qemu-system conflicts with it).
. /etc/os-release
bpo="${VERSION_CODENAME}-backports"
if ! grep -rqsE --include=sources.list --include='*.list' --include='*.sources' \
    "^[^#]*[[:space:]]$bpo([[:space:]]|\$)" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  cat >/etc/apt/sources.list.d/bulwark-backports.sources <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: $bpo
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends -t "$bpo" qemu-system-x86 busybox-static xz-utils cpio >/dev/null

mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The kernel package the backports metapackage points at (exact name, then downloaded).
meta=$(apt-cache madison linux-image-amd64 | awk -v s="$bpo" '$0 ~ s {print $3; exit}')
[[ -n "$meta" ]] || { echo "tests/vm/setup.sh: no linux-image-amd64 in $bpo" >&2; exit 1; }
pkg=$(apt-cache depends "linux-image-amd64=$meta" | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
(cd "$tmp" && apt-get download -qq "$pkg" 2>/dev/null)
dpkg-deb -x "$tmp"/"$pkg"_*.deb "$tmp/k"
kver=$(ls "$tmp/k/lib/modules")
mods="$tmp/k/lib/modules/$kver/kernel"

# initramfs: busybox, the modules 9p needs and those job disks need (loop, ext4 and what ext4
# depends on) (uncompressed: busybox insmod reads plain .ko),
# and an /init that mounts the host's root (read-only, with a tmpfs overlay) and switches to the script named on the command
# line (bulwark.init=PATH).
ird="$tmp/initramfs"
mkdir -p "$ird/bin"
cp "$(command -v busybox)" "$ird/bin/busybox"
for m in fs/netfs/netfs net/9p/9pnet net/9p/9pnet_virtio fs/9p/9p fs/overlayfs/overlay \
    drivers/block/loop crypto/crc32c_generic fs/jbd2/jbd2 lib/crc16 fs/mbcache fs/ext4/ext4; do
  xz -dc "$mods/$m.ko.xz" >"$ird/$(basename "$m").ko"
done
cat >"$ird/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /dev /host /rw /root
mount -t proc proc /proc
mount -t devtmpfs dev /dev
fail() { echo "bulwark-vm: $*"; echo "bulwark-vm-exit-$(sed -n 's/.*bulwark\.token=\([0-9a-f]*\).*/\1/p' /proc/cmdline)=125"; echo o >/proc/sysrq-trigger; sleep 10; exit 1; }
for m in netfs 9pnet 9pnet_virtio 9p overlay loop crc32c_generic jbd2 crc16 mbcache ext4; do insmod /$m.ko || fail "insmod $m"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose host /host || fail "mount the host's root"
# Writable on top, in the VM's memory: what the tests write never reaches the host.
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work overlay /root || fail "mount the overlay root"
next=$(sed -n 's/.*bulwark\.init=\([^ ]*\).*/\1/p' /proc/cmdline)
[ -n "$next" ] || fail "no bulwark.init= on the kernel command line"
umount /proc /dev
exec switch_root /root /bin/bash "$next"
INIT
chmod 0755 "$ird/init"
(cd "$ird" && find . | cpio -o -H newc --quiet | gzip -1 >"$tmp/initrd.gz")
cp "$tmp/k/boot/vmlinuz-$kver" "$dir/vmlinuz.new"
cp "$tmp/initrd.gz" "$dir/initrd.gz.new"
mv "$dir/vmlinuz.new" "$dir/vmlinuz"
mv "$dir/initrd.gz.new" "$dir/initrd.gz"
echo "$kver" >"$dir/kernel.txt"
echo "$stamp" >"$dir/stamp"
chmod -R a+rX "$dir"
echo "test VM prepared in $dir (kernel $kver)"
