#!/usr/bin/env bash
# The boot-time path on a real kernel and a real systemd: boots a Debian
# bookworm guest under qemu whose sops-nix.service (the unit the NixOS module
# generates with useSystemdActivation) installs secrets with our release
# binary, and checks owners, modes, contents, generations, restarts and a
# failing manifest from inside the guest (guest/driver.sh).
#
#   sudo vm-tests/debian/run.sh
#
# Needs root, debootstrap, qemu-system-x86_64 and mkfs.ext4 (e2fsprogs >= 1.43,
# for -d); no loop mounts. The guest has no network.
#
# Steps:
#  1. cargo build --release (or take SOPS_INSTALL_SECRETS_BIN)
#  2. the root file system: vm-tests/debian/rootfs.sh, cached under
#     $VM_ROOTFS_CACHE/<sha256 of rootfs.sh> (default /var/cache/sops-install-secrets/vm-rootfs);
#     only a missing cache entry runs debootstrap
#  3. a copy of the cached tree plus this run's files (binary, host key,
#     fixtures, manifests, units, driver) becomes an ext4 image (mkfs.ext4 -d)
#  4. qemu boots the tree's Debian kernel on it: KVM when /dev/kvm works, else
#     TCG; serial console to console.log, the driver's results (TAP) to a second
#     serial port; a hard time limit
#  5. the results are parsed; any failed, missing or extra check fails the run,
#     and then the guest's journal of sops-nix.service is printed
#
# Environment: VM_TEST_ACCEL=auto|kvm|tcg (auto), VM_TEST_TIMEOUT seconds for
# the guest (480), VM_TEST_KEEP=1 keeps the work directory, DEBIAN_MIRROR.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache_root=${VM_ROOTFS_CACHE:-/var/cache/sops-install-secrets/vm-rootfs}
accel=${VM_TEST_ACCEL:-auto}
timeout_s=${VM_TEST_TIMEOUT:-480}
start=$SECONDS

log() { printf '==> [%3ds] %s\n' $((SECONDS - start)) "$*" >&2; }
die() { printf 'vm-test: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "must run as root (debootstrap, file ownership in the image)"
for tool in debootstrap qemu-system-x86_64 mkfs.ext4 unshare flock; do
  command -v "$tool" >/dev/null \
    || die "$tool not found: apt-get install -y debootstrap qemu-system-x86 e2fsprogs util-linux"
done

# --- 1. the binary -------------------------------------------------------------------
bin=${SOPS_INSTALL_SECRETS_BIN:-}
if [[ -z $bin ]]; then
  log "cargo build --release"
  (cd "$repo" && cargo build --release --locked --quiet)
  bin=$repo/target/release/sops-install-secrets
fi
[[ -x $bin ]] || die "$bin is not an executable"

# --- 2. the cached root file system ------------------------------------------------
key=$(sha256sum "$here/rootfs.sh" | cut -d' ' -f1)
cache=$cache_root/$key
mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
flock 9 # one builder at a time; a second run waits and then finds the cache
if [[ -f $cache/complete ]]; then
  log "root file system cached at $cache"
else
  log "building the root file system (debootstrap) into $cache"
  rm -rf "$cache.partial"
  bash "$here/rootfs.sh" "$cache.partial" > "$cache_root/build-$key.log" 2>&1 \
    || { tail -n 40 "$cache_root/build-$key.log" >&2; die "rootfs.sh failed (log: $cache_root/build-$key.log)"; }
  touch "$cache.partial/complete"
  rm -rf "$cache"
  mv "$cache.partial" "$cache"
  log "root file system built"
fi
flock -u 9

# --- 3. this run's image -------------------------------------------------------------
work=$(mktemp -d /var/tmp/sops-vm-test.XXXXXX)
if [[ ${VM_TEST_KEEP:-0} == 1 ]]; then
  trap 'echo "work directory kept: $work" >&2' EXIT
else
  trap 'rm -rf "$work"' EXIT
fi
root=$work/root
cp -a "$cache/rootfs" "$root"

fixtures=$here/fixtures
guest=$here/guest
install -o root -g root -m 0755 "$bin" "$root/usr/local/bin/sops-install-secrets"
install -D -m 0755 "$guest/driver.sh" "$root/usr/local/libexec/vm-test/driver.sh"
# The host key the fixtures are encrypted to (its ssh-to-age recipient).
install -D -m 0600 "$repo/tests/fixtures/keys/host_ed25519" "$root/etc/ssh/ssh_host_ed25519_key"
install -m 0644 "$repo/tests/fixtures/keys/host_ed25519.pub" "$root/etc/ssh/ssh_host_ed25519_key.pub"
t=$root/etc/sops-test
install -d -m 0755 "$t" "$t/fixtures" "$t/manifests" "$t/templates"
install -m 0644 "$fixtures"/enc/*.enc.yaml "$t/fixtures/"
install -m 0644 "$guest"/manifests/*.json "$t/manifests/"
install -m 0644 "$guest/manifests/1-boot.json" "$t/manifest.json"
install -m 0644 "$guest/app.conf.template" "$t/templates/app.conf"
install -d -m 0700 "$t/expected"
install -m 0600 "$fixtures"/expected/* "$t/expected/"
# Units, enabled the way `systemctl enable` would.
units=$root/etc/systemd/system
install -m 0644 "$guest"/units/* "$units/"
install -d "$units/sysinit.target.wants" "$units/multi-user.target.wants"
ln -s ../sops-nix.service "$units/sysinit.target.wants/sops-nix.service"
ln -s sops-nix.service "$units/sops-install-secrets.service"
for u in sops-secrets.target secret-test.service db-consumer.service vm-test-driver.service; do
  ln -s "../$u" "$units/multi-user.target.wants/$u"
done

image=$work/root.ext4
mkfs.ext4 -q -F -L vmroot -d "$root" "$image" 2G >/dev/null
rm -rf "$root"
log "image ready"

# --- 4. boot ------------------------------------------------------------------------
# /dev/kvm may answer ioctls and still not run a guest (nested virtualisation
# here: qemu either aborts on an MSR or spins without output). So KVM counts
# only if the kernel boots far enough under it to panic for want of a root
# file system (panic=-1 and -no-reboot end qemu there) within 15 seconds.
kvm_works() {
  [[ -c /dev/kvm ]] || return 1
  python3 -c 'import fcntl, os; assert fcntl.ioctl(os.open("/dev/kvm", os.O_RDWR), 0xAE00) == 12' \
    2>/dev/null || return 1
  timeout --kill-after=5 15 qemu-system-x86_64 -enable-kvm -m 256 -kernel "$cache/vmlinuz" \
    -append "console=ttyS0 panic=-1" -nic none -display none -monitor none -no-reboot \
    -serial "file:$work/kvm-probe.log" >/dev/null 2>&1 || return 1
  grep -q 'Kernel panic' "$work/kvm-probe.log"
}
case $accel in
  auto)
    log "probing KVM"
    if kvm_works; then accel=kvm; else accel=tcg; fi
    ;;
  kvm | tcg) ;;
  *) die "VM_TEST_ACCEL must be auto, kvm or tcg" ;;
esac
if [[ $accel == kvm ]]; then
  accel_args=(-enable-kvm -cpu host)
else
  accel_args=(-accel tcg -cpu max)
fi
console=$work/console.log
results=$work/results.log
log "booting ($accel, limit ${timeout_s}s)"
qemu_rc=0
timeout --kill-after=10 "$timeout_s" qemu-system-x86_64 \
  "${accel_args[@]}" -smp 2 -m 1024 \
  -kernel "$cache/vmlinuz" -initrd "$cache/initrd.img" \
  -append "root=/dev/vda rw console=ttyS0 panic=-1 quiet systemd.show_status=1" \
  -drive "file=$image,if=virtio,format=raw" \
  -nic none -display none -monitor none -no-reboot \
  -serial "file:$console" -serial "file:$results" \
  || qemu_rc=$?
log "guest stopped (qemu exit $qemu_rc)"

# --- 5. verdict -----------------------------------------------------------------------
tr -d '\r' < "$results" > "$results.txt" 2>/dev/null || : > "$results.txt"
failed=()
plan=$(sed -n 's/^1\.\.\([0-9][0-9]*\)$/\1/p' "$results.txt" | head -n 1)
[[ -n $plan ]] || failed+=("no test plan from the guest")
passed=$(grep -c '^ok ' "$results.txt" || true)
grep '^ok \|^not ok \|^# ' "$results.txt" || true
while IFS= read -r line; do failed+=("$line"); done < <(grep '^not ok ' "$results.txt" || true)
grep -q '^VMTEST-END$' "$results.txt" || failed+=("the driver did not finish")
[[ -z $plan || $passed == "$plan" ]] || failed+=("$passed of $plan checks passed")
[[ $qemu_rc == 0 ]] || failed+=("qemu exited with $qemu_rc (124: time limit)")

if ((${#failed[@]})); then
  if grep -q '^VMTEST-JOURNAL-BEGIN$' "$results.txt"; then
    echo "--- guest journal of sops-nix.service ---" >&2
    sed -n '/^VMTEST-JOURNAL-BEGIN$/,/^VMTEST-JOURNAL-END$/p' "$results.txt" | sed '1d;$d' >&2
  fi
  echo "--- last lines of the guest console ---" >&2
  tr -d '\r' < "$console" | tail -n 40 >&2
  echo "--- FAILED ---" >&2
  printf '  %s\n' "${failed[@]}" >&2
  exit 1
fi
log "PASS: $passed checks ($accel)"
