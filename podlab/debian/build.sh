#!/bin/bash
# Build a real Debian 12 (bookworm) guest for the e2e suite: debootstrap's default system plus
# cloud-init, qemu-guest-agent and openssh-server (with their Recommends) and linux-image-amd64
# (without), on a 2 GiB MBR disk with one ext4 partition booted by extlinux, written as a
# compressed qcow2: OUT_DIR/debian-12.qcow2.
#
# Usage: podlab/debian/build.sh [OUT_DIR]
#   default OUT_DIR: ${KVMMGR_TEST_CACHE:-/var/cache/kvmmgr-tests}/debian-12 (outside the clone)
#   env DEBIAN_MIRROR   the archive to install from (default http://deb.debian.org/debian)
#
# Incremental: the disk is rebuilt only when an input changed (hash in OUT_DIR/stamp) or the qcow2
# is missing. The build happens in OUT_DIR/.work.*/ and the qcow2 is renamed into place at the end;
# an interrupted build leaves no half disk, no mounts and no loop devices behind.
# Progress goes to stderr; the last (only) line on stdout is the absolute path of the qcow2.
# Needs root: apt-get (missing host tools), chroot, a loop mount for extlinux.
#
# What the guest has, besides Debian's defaults:
#   - cloud-init reads ConfigDrive and NoCloud only;
#   - kvmtest-http.service: HTTP on TCP 80 serving /srv/kvmtest (a page with "kvmtest-debian");
#   - kvmtest-udpecho.service: UDP echo on port 7;
#   - a small initramfs (MODULES=list) that finds its root on virtio-blk, virtio-scsi, SATA or IDE;
#   - the locale cloud-init sets (en_US.UTF-8) generated beforehand, so first boot skips locale-gen.
# Left for first boot, as on Debian's cloud images: /etc/machine-id (empty), SSH host keys, the
# host name. The root account has no password; cloud-init's default user `debian` gets the keys.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-${KVMMGR_TEST_CACHE:-/var/cache/kvmmgr-tests}/debian-12}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DISK=$OUT/debian-12.qcow2
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=http://deb.debian.org/debian-security
DISK_MIB=2048
PART_START_MIB=1
PACKAGES="cloud-init qemu-guest-agent openssh-server"   # installed with their Recommends
KERNEL=linux-image-amd64                                 # installed without them
# The initramfs holds only these (and their dependencies): root on virtio-blk, virtio-scsi,
# SATA (ahci) or IDE (ata_piix), ext4; and sr_mod, so that a config drive on a CD-ROM is there
# when cloud-init's generator (ds-identify) looks for it, before the root's udev loads modules.
INITRAMFS_MODULES="virtio_pci virtio_blk virtio_scsi sd_mod ahci ata_piix ext4 crc32c_generic sr_mod"
CMDLINE_EXTRA="console=tty0 console=ttyS0,115200"
LOCALE=en_US.UTF-8
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true LC_ALL=C LANGUAGE=C LANG=C

log() { printf '[debian-build] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
T0=$(date +%s.%N)
elapsed() { awk "BEGIN{printf \"%.0f\", $(date +%s.%N) - $T0}"; }

# --- up to date? ------------------------------------------------------------------------------
STAMP=$(
	cd "$SRC"
	find . -type f ! -name README.md ! -name '*~' | LC_ALL=C sort | xargs sha256sum
	echo "suite=$SUITE mirror=$MIRROR"
) || die "cannot hash the inputs"
STAMP=$(echo "$STAMP" | sha256sum | cut -d' ' -f1)
if [ -f "$DISK" ] && [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$STAMP" ]; then
	log "up to date: $DISK"
	echo "$DISK"
	exit 0
fi
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, loop mount)"

# --- host tools: install the Debian packages of missing commands ------------------------------
apt_install() {
	log "apt-get install $*"
	apt-get install -y -q --no-install-recommends "$@" >&2 ||
		{ apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "$@" >&2; }
}
missing=()
for pair in debootstrap:debootstrap extlinux:extlinux sfdisk:fdisk mke2fs:e2fsprogs \
	qemu-img:qemu-utils losetup:mount mount:mount findmnt:util-linux gpgv:gpgv \
	/usr/lib/syslinux/mbr/mbr.bin:syslinux-common \
	/usr/share/keyrings/debian-archive-keyring.gpg:debian-archive-keyring; do
	cmd=${pair%:*}
	case "$cmd" in
	/*) [ -e "$cmd" ] || missing+=("${pair##*:}") ;;
	*) command -v "$cmd" >/dev/null 2>&1 || missing+=("${pair##*:}") ;;
	esac
done
[ ${#missing[@]} = 0 ] || apt_install $(printf '%s\n' "${missing[@]}" | sort -u)

# --- work area and its cleanup ----------------------------------------------------------------
W=$(mktemp -d "$OUT/.work.XXXXXX")
R=$W/root
MNT=$W/mnt
LOOP=
cleanup() {
	local rc=$? pid m left
	set +e
	trap - EXIT INT TERM
	# processes still running in the chroot (an interrupted dpkg, a daemon a script started)
	for pid in $(ls /proc | grep -E '^[0-9]+$'); do
		[ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$R" ] && kill -KILL "$pid" 2>/dev/null
	done
	# every mount under the work area, deepest first; then the loop device
	for m in $(findmnt -rn -o TARGET | awk -v w="$W/" 'index($0, w) == 1' | sort -r); do
		umount "$m" 2>/dev/null || umount -l "$m"
	done
	[ -z "$LOOP" ] || losetup -d "$LOOP"
	left=$(findmnt -rn -o TARGET | awk -v w="$W/" 'index($0, w) == 1')
	if [ -n "$left" ]; then
		log "ERROR: still mounted, $W left in place: $left"
	else
		rm -rf --one-file-system "$W"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_root() { chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C \
	DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true "$@"; }
APT="apt-get -y -q -o Acquire::Languages=none -o Dpkg::Use-Pty=0"

# --- 1. debootstrap: Debian's default system (priority required + important) -----------------
# Two stages, so that dpkg skips its fsyncs (force-unsafe-io) while the base is configured: the
# disk is written once, at the end, from the finished tree.
log "debootstrap $SUITE (first stage) from $MIRROR"
debootstrap --foreign --arch=amd64 \
	--keyring=/usr/share/keyrings/debian-archive-keyring.gpg "$SUITE" "$R" "$MIRROR" >&2
mkdir -p "$R/etc/dpkg/dpkg.cfg.d"
echo force-unsafe-io >"$R/etc/dpkg/dpkg.cfg.d/kvmtest-build"
log "debootstrap (second stage) [$(elapsed) s]"
chroot "$R" /debootstrap/debootstrap --second-stage >&2

# --- 2. the chroot: what apt needs while installing -------------------------------------------
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount --bind /dev "$R/dev"
mount --bind /dev/pts "$R/dev/pts"
cp -L /etc/resolv.conf "$R/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' >"$R/usr/sbin/policy-rc.d"   # no daemon starts in the chroot
chmod 755 "$R/usr/sbin/policy-rc.d"
cat >"$R/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
EOF

# The locale cloud-init's locale module sets (Debian's default, $LOCALE), generated now by the
# locales package's own configuration instead of by locale-gen at first boot.
in_root debconf-set-selections <<EOF
locales locales/locales_to_be_generated multiselect $LOCALE UTF-8
locales locales/default_environment_locale select $LOCALE
EOF
# The initramfs: only the storage modules listed (MODULES=list), gzip (zstd is a Recommends of
# initramfs-tools, not installed). In place before the kernel's postinst makes the first one.
mkdir -p "$R/etc/initramfs-tools/conf.d"
cat >"$R/etc/initramfs-tools/conf.d/kvmtest.conf" <<EOF
# kvmtest: a small initramfs that finds the root filesystem on virtio-blk, virtio-scsi, SATA or
# IDE (modules in /etc/initramfs-tools/modules), quick to unpack and boot under TCG.
MODULES=list
COMPRESS=gzip
EOF

log "apt-get install $PACKAGES [$(elapsed) s]"
in_root $APT update >&2
in_root $APT install $PACKAGES >&2
log "apt-get install --no-install-recommends $KERNEL [$(elapsed) s]"
in_root $APT install --no-install-recommends $KERNEL >&2
printf '%s\n' "# kvmtest: the root filesystem's drivers (conf.d/kvmtest.conf)" $INITRAMFS_MODULES \
	>>"$R/etc/initramfs-tools/modules"
in_root update-initramfs -u -k all >&2

# --- 3. configuration -------------------------------------------------------------------------
log "configuring [$(elapsed) s]"
KV=$(ls "$R/lib/modules")
[ "$(echo "$KV" | wc -w)" = 1 ] || die "expected one kernel in the guest, found: $KV"
UUID=$(cat /proc/sys/kernel/random/uuid)

cat >"$R/etc/fstab" <<EOF
# <file system> <mount point> <type> <options> <dump> <pass>
UUID=$UUID / ext4 errors=remount-ro 0 1
EOF
mkdir -p "$R/boot/extlinux"
cat >"$R/boot/extlinux/extlinux.conf" <<EOF
DEFAULT debian
PROMPT 0
TIMEOUT 0
LABEL debian
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND root=UUID=$UUID ro $CMDLINE_EXTRA
EOF

cat >"$R/etc/cloud/cloud.cfg.d/95_kvmtest_datasources.cfg" <<'EOF'
# kvmtest: kvm-manager's config drive is OpenStack's (label config-2) or NoCloud's (cidata).
datasource_list: [ConfigDrive, NoCloud]
EOF

# the test responders: stdlib python3 only; after the network, delaying nothing
mkdir -p "$R/srv/kvmtest" "$R/usr/local/lib/kvmtest"
cat >"$R/srv/kvmtest/index.html" <<'EOF'
<!DOCTYPE html>
<title>kvmtest</title>
<pre>
kvmtest-debian
</pre>
EOF
cat >"$R/usr/local/lib/kvmtest/udpecho.py" <<'EOF'
"""kvmtest: UDP echo on port 7 (IPv4 and IPv6): every datagram goes back to its sender."""

import socket

sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
sock.bind(("::", 7))
while True:
    data, peer = sock.recvfrom(65535)
    try:
        sock.sendto(data, peer)
    except OSError:  # no route back (yet): drop it, as a network would
        pass
EOF
cat >"$R/etc/systemd/system/kvmtest-http.service" <<'EOF'
[Unit]
Description=kvmtest HTTP responder on TCP 80
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/python3 -m http.server 80 --directory /srv/kvmtest
Restart=always

[Install]
WantedBy=multi-user.target
EOF
cat >"$R/etc/systemd/system/kvmtest-udpecho.service" <<'EOF'
[Unit]
Description=kvmtest UDP echo responder on port 7
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/python3 /usr/local/lib/kvmtest/udpecho.py
Restart=always

[Install]
WantedBy=multi-user.target
EOF
in_root systemctl enable kvmtest-http.service kvmtest-udpecho.service >&2

# --- 4. first-boot state, as on Debian's cloud images; no traces of this build ---------------
in_root $APT clean >&2
rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/var/cache/debconf/*-old \
	"$R"/var/lib/dpkg/*-old "$R"/var/log/apt/eipp.log.xz "$R"/tmp/* "$R"/var/tmp/*
mkdir -p "$R/var/lib/apt/lists/partial"
rm -f "$R"/etc/ssh/ssh_host_* "$R/usr/sbin/policy-rc.d" "$R/etc/dpkg/dpkg.cfg.d/kvmtest-build"
: >"$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id" "$R/var/lib/systemd/random-seed"
echo localhost >"$R/etc/hostname"
: >"$R/etc/resolv.conf"
cat >"$R/etc/hosts" <<'EOF'
127.0.0.1	localhost
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
EOF
for m in $(findmnt -rn -o TARGET | awk -v w="$R/" 'index($0, w) == 1' | sort -r); do umount "$m"; done
NPKG=$(chroot "$R" dpkg-query -W -f '${db:Status-Abbrev}\n' | grep -c '^ii')

# --- 5. disk: MBR, one bootable ext4 partition from 1 MiB to the end, extlinux ----------------
log "disk: ${DISK_MIB} MiB, ext4 from ${PART_START_MIB} MiB, kernel $KV, $NPKG packages [$(elapsed) s]"
RAW=$W/disk.raw
PART_BYTES=$(((DISK_MIB - PART_START_MIB) << 20))
truncate -s "${DISK_MIB}M" "$RAW"
sfdisk -q "$RAW" >&2 <<EOF
label: dos
start=$((PART_START_MIB << 11)), type=83, bootable
EOF
mke2fs -q -F -t ext4 -U "$UUID" -d "$R" -E "offset=$((PART_START_MIB << 20))" \
	-b 4096 "$RAW" $((PART_BYTES / 4096)) >&2
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$RAW" bs=440 count=1 conv=notrunc status=none
LOOP=$(losetup -f --show -o $((PART_START_MIB << 20)) --sizelimit "$PART_BYTES" "$RAW")
mkdir -p "$MNT"
mount -t ext4 "$LOOP" "$MNT"
extlinux --install "$MNT/boot/extlinux" >&2
umount "$MNT"
losetup -d "$LOOP"
LOOP=
log "qcow2 [$(elapsed) s]"
qemu-img convert -c -W -O qcow2 "$RAW" "$W/disk.qcow2"

mv "$W/disk.qcow2" "$DISK"
echo "$STAMP" >"$W/stamp"
mv "$W/stamp" "$OUT/stamp"
log "built in $(elapsed) s: $DISK ($(du -m "$DISK" | cut -f1) MiB, $NPKG packages, kernel $KV)"
echo "$DISK"
