#!/bin/bash
# pid 1 of the cgroup v2 test VM (started by the initramfs tests/vm/setup.sh builds, with the
# host's root mounted read-only over 9p, under a tmpfs overlay, as /). Gives the VM its own
# /run, mounts cgroup2 and nothing else at /sys/fs/cgroup (so every controller is on v2, as on a
# current systemd host), runs the script named by bulwark.cmd= on the kernel command line as
# root, prints its exit status as `bulwark-vm-exit-<token>=N` (the token from the command
# line, new for every run) and powers the VM off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t securityfs securityfs /sys/kernel/security
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
# Power off; should that not happen, pid 1 exiting panics the kernel, which ends qemu too
# (-no-reboot), so nothing after a reported status ever runs.
token=$(sed -n 's/.*bulwark\.token=\([0-9a-f]*\).*/\1/p' /proc/cmdline)
off() { echo "bulwark-vm-exit-$token=$1"; sync; echo o >/proc/sysrq-trigger; sleep 30; exit "$1"; }
cmd=$(sed -n 's/.*bulwark\.cmd=\([^ ]*\).*/\1/p' /proc/cmdline)
script=$(cat "$cmd") || off 125
# The root is the host's under an in-memory overlay: everything, /tmp and /home included, is
# writable and what is written stays in the VM, so a checkout anywhere (even under /tmp) is
# seen at its own path. Only /run starts empty, as after a boot.
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup || off 125
ip link set lo up
hostname bulwark-vm
echo "bulwark-vm: kernel $(uname -r), cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
bash -c "$script" </dev/null
off $?
