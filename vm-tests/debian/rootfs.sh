#!/usr/bin/env bash
# The recipe of the Debian VM test's root file system (the cache key of
# vm-tests/debian/run.sh is the sha256 of this file: edit it and the next run
# rebuilds). Builds, into the empty directory OUT:
#
#   OUT/rootfs/       a Debian bookworm tree: systemd, dbus, udev, util-linux,
#                     the users the test needs, and the kernel's modules
#   OUT/vmlinuz       the Debian kernel (linux-image-amd64) installed in it
#   OUT/initrd.img    an initramfs that mounts an ext4 root from virtio-blk
#
#   bash vm-tests/debian/rootfs.sh OUT        (as root; downloads from the mirror)
#
# Nothing of this project goes in here (no binary, manifest, key or unit):
# run.sh adds those on every run, so the cached tree stays valid across commits.
# DEBIAN_MIRROR overrides the mirror (it does not change what is built).
set -euo pipefail

out=${1:?usage: rootfs.sh OUT}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$out/rootfs
mkdir -p "$root"

# Runs a command inside the tree with /proc, /sys and /dev mounted in a private
# mount namespace, so those mounts disappear with the command even if it fails.
in_root() {
  # shellcheck disable=SC2016 # the inner shell expands $1 and $@
  unshare --mount --propagation private -- /bin/sh -euc '
    root=$1; shift
    mount -t proc proc "$root/proc"
    mount -t sysfs sys "$root/sys"
    mount --rbind /dev "$root/dev"
    exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
      DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"' sh "$root" "$@"
}

# --- base system -----------------------------------------------------------------
debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,dbus,udev,util-linux,kmod \
  bookworm "$root" "$mirror"

# --- kernel ------------------------------------------------------------------------
# A small initramfs: only what mounts the root disk (virtio-blk, ext4). Written
# before the kernel is installed so that its postinst builds it this way.
mkdir -p "$root/etc/initramfs-tools/conf.d"
echo 'MODULES=list' > "$root/etc/initramfs-tools/conf.d/vm-test.conf"
printf '%s\n' virtio_pci virtio_blk ext4 crc32c_generic >> "$root/etc/initramfs-tools/modules"
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
in_root apt-get install -y --no-install-recommends linux-image-amd64
cp -L "$root/vmlinuz" "$out/vmlinuz"
cp -L "$root/initrd.img" "$out/initrd.img"

# --- users -------------------------------------------------------------------------
# As the NixOS configuration of the test declares them: a system user
# secret-test with its own group, a normal user alice, and NixOS's `keys`
# group, which owns the secrets mount point.
in_root groupadd --system keys
in_root useradd --system --user-group --no-create-home --home-dir /nonexistent \
  --shell /usr/sbin/nologin secret-test
in_root useradd --create-home --user-group --shell /bin/bash alice

# --- a quiet, quick boot -------------------------------------------------------------
echo vm-test > "$root/etc/hostname"
: > "$root/etc/fstab"                  # the root comes from root= on the command line
: > "$root/etc/machine-id"             # generated at boot
rm -f "$root/etc/resolv.conf"          # the guest has no network
# Timers and jobs that would only add noise to the boot.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
  fstrim.timer dpkg-db-backup.timer; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done

# --- smaller ---------------------------------------------------------------------
in_root apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
  "$root"/usr/share/locale/* "$root"/var/log/*.log "$root"/var/cache/debconf/*-old
