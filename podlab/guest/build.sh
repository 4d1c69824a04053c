#!/bin/bash
# Build the kvm-manager end-to-end test guest: Debian's kernel + a busybox initramfs (init.sh,
# rootfs/, udpecho.c) on a BIOS-bootable FAT "superfloppy" (SYSLINUX), written as OUT_DIR/guest.qcow2.
#
# Usage: podlab/guest/build.sh [OUT_DIR]          (default OUT_DIR: <repo>/build/guest)
#   env GUEST_IPERF3=1   also put iperf3 and its libraries into the guest (bigger, slower boot)
#
# Incremental: the kernel .deb and its extracted tree are kept in OUT_DIR/kernel/; the initramfs and
# the disk are rebuilt only when an input changed (hash in OUT_DIR/stamp) or guest.qcow2 is missing.
# Outputs are written to temporary files and renamed, so an interrupted build leaves no half disk.
# Progress goes to stderr; the last (only) line on stdout is the absolute path of guest.qcow2.
# Needs root only to apt-get install missing tools (Debian); no loop mounts, no containers.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SRC/../.." && pwd)
OUT=${1:-$REPO/build/guest}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DISK=$OUT/guest.qcow2
DISK_MB=64
CMDLINE="console=ttyS0 panic=-1 quiet"
GUEST_IPERF3=${GUEST_IPERF3:-0}
# Loaded in this order (plus dependencies) by init.sh. Built in (=y) in Debian's config and so not
# listed: ACPI, af_packet, unix, ipv6, devtmpfs, 8250 serial, i8042/atkbd, nls (utf8 default).
MODULES="virtio_pci virtio_net virtio_blk virtio_scsi e1000 e1000e 8139cp vmxnet3
	sr_mod sd_mod ata_piix ahci isofs vfat nls_cp437 nls_iso8859_1 nls_utf8 nls_ascii
	button evdev"
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin MTOOLS_SKIP_CHECK=1 DEBIAN_FRONTEND=noninteractive

log() { printf '[guest-build] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
T0=$(date +%s.%N)

# --- host tools: install the Debian packages of missing commands ------------------------------
apt_install() {
	log "apt-get install $*"
	apt-get install -y -q --no-install-recommends "$@" >&2 ||
		{ apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "$@" >&2; }
}
missing=()
for pair in busybox:busybox-static mkfs.vfat:dosfstools syslinux:syslinux mcopy:mtools \
	qemu-img:qemu-utils cpio:cpio depmod:kmod modprobe:kmod gzip:gzip gcc:gcc \
	grub-mkstandalone:grub-common; do
	command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ "$GUEST_IPERF3" = 1 ] && ! command -v iperf3 >/dev/null 2>&1; then missing+=(iperf3); fi
[ -d /usr/lib/grub/x86_64-efi ] || missing+=(grub-efi-amd64-bin)   # the UEFI loader's modules
[ ${#missing[@]} = 0 ] || apt_install $(printf '%s\n' "${missing[@]}" | sort -u)
# static linking needs libc.a (libc6-dev), which a bare gcc install does not bring
[ -f "$(gcc -print-file-name=libc.a)" ] || apt_install libc6-dev

# --- kernel: the package linux-image-amd64 depends on, downloaded and extracted once -----------
KDIR=$OUT/kernel
KROOT=$KDIR/root
if [ ! -f "$KDIR/ready" ]; then
	kpkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
	pkg=$(kpkg)
	[ -n "$pkg" ] || { apt-get update -q >&2; pkg=$(kpkg); }
	[ -n "$pkg" ] || die "cannot resolve linux-image-amd64 (apt sources?)"
	mkdir -p "$KDIR/debs"
	deb=$(ls "$KDIR/debs/${pkg}_"*.deb 2>/dev/null | head -1 || true)
	if [ -z "$deb" ]; then
		log "downloading $pkg"
		dl=$(mktemp -d "$KDIR/debs/.dl.XXXXXX")
		(cd "$dl" && apt-get -q -o APT::Sandbox::User=root download "$pkg" >&2)
		mv "$dl"/*.deb "$KDIR/debs/"
		rmdir "$dl"
		deb=$(ls "$KDIR/debs/${pkg}_"*.deb | head -1)
	fi
	log "extracting $(basename "$deb")"
	rm -rf "$KROOT.tmp" "$KROOT"
	dpkg -x "$deb" "$KROOT.tmp"
	kv=$(ls "$KROOT.tmp/lib/modules")
	depmod -b "$KROOT.tmp" "$kv"            # modules.dep is not shipped in the .deb
	mv "$KROOT.tmp" "$KROOT"
	echo "$pkg" >"$KDIR/ready"
fi
KV=$(ls "$KROOT/lib/modules")
VMLINUZ=$KROOT/boot/vmlinuz-$KV
[ -f "$VMLINUZ" ] || die "no $VMLINUZ (delete $KDIR to fetch the kernel again)"

# --- up to date? ------------------------------------------------------------------------------
BUSYBOX=$(command -v busybox)
STAMP=$(
	cd "$SRC"
	find . -type f ! -name README.md ! -name '*~' | LC_ALL=C sort | xargs sha256sum
	sha256sum "$BUSYBOX" "$VMLINUZ"
	echo "kv=$KV iperf3=$GUEST_IPERF3 disk_mb=$DISK_MB cmdline=$CMDLINE modules=$(echo $MODULES)"
	if [ "$GUEST_IPERF3" = 1 ]; then sha256sum "$(command -v iperf3)"; fi
) || die "cannot hash the inputs"
STAMP=$(echo "$STAMP" | sha256sum | cut -d' ' -f1)
if [ -f "$DISK" ] && [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$STAMP" ]; then
	log "up to date ($KV)"
	echo "$DISK"
	exit 0
fi

W=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$W"' EXIT
trap 'exit 130' INT TERM

# --- initramfs --------------------------------------------------------------------------------
log "initramfs (kernel $KV)"
R=$W/root
mkdir -p "$R"/{bin,dev,proc,sys,run,tmp,etc,root,var/log,mnt/cfg,mnt/disk,www,lib/modules}
cp "$BUSYBOX" "$R/bin/busybox"
for a in $("$BUSYBOX" --list); do [ -e "$R/bin/$a" ] || ln -s busybox "$R/bin/$a"; done
ln -s bin "$R/sbin"
mkdir -p "$R/usr"
ln -s ../bin "$R/usr/bin"
ln -s ../bin "$R/usr/sbin"

copy_libs() {   # copy the shared libraries of binary $1 into the initramfs (nothing if static)
	local l
	for l in $(ldd "$1" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
		[ -e "$R$l" ] || { mkdir -p "$R$(dirname "$l")"; cp -L "$l" "$R$l"; }
	done
}
copy_libs "$R/bin/busybox"

# Debian signs its modules; the kernel checks the RSA signature on every insmod, which is slow
# under TCG. The signature is optional (MODULE_SIG_FORCE is off): drop it, the modules still load.
strip_sig() {
	local f=$1 n siglen
	[ "$(tail -c 28 "$f" | head -c 27)" = "~Module signature appended~" ] || return 0
	# layout: ELF | signature | struct module_signature (12 bytes, ends in __be32 sig_len) | magic (28)
	siglen=$(tail -c 32 "$f" | head -c 4 | od -An -tu1 | awk '{print $1 * 16777216 + $2 * 65536 + $3 * 256 + $4}')
	n=$(($(stat -c %s "$f") - 28 - 12 - siglen))
	truncate -s "$n" "$f"
}
: >"$R/lib/modules/load.list"
for m in $MODULES; do
	deps=$(modprobe -d "$KROOT" -S "$KV" --show-depends "$m") || die "module $m not found in $KV"
	while read -r kind path _; do
		[ "$kind" = insmod ] || continue     # "builtin NAME": nothing to load
		case "$path" in */arch/x86/crypto/*) continue ;; esac   # CPU-specific (pclmul...) softdeps: qemu64 lacks them
		b=$(basename "$path")
		b=${b%.xz}; b=${b%.zst}; b=${b%.gz}
		[ -e "$R/lib/modules/$b" ] && continue
		case "$path" in
		*.xz) xz -dc "$path" >"$R/lib/modules/$b" ;;
		*.zst) zstd -qdc "$path" >"$R/lib/modules/$b" ;;
		*.gz) gzip -dc "$path" >"$R/lib/modules/$b" ;;
		*) cp "$path" "$R/lib/modules/$b" ;;
		esac
		strip_sig "$R/lib/modules/$b"
		echo "$b" >>"$R/lib/modules/load.list"
	done <<<"$deps"
done

gcc -static -Os -s -o "$R/bin/udpecho" "$SRC/udpecho.c"
gcc -static -Os -s -o "$R/bin/dhcp6c" "$SRC/dhcp6c.c"
cp -a "$SRC/rootfs/." "$R/"
cp "$SRC/init.sh" "$R/init"
chmod 755 "$R/init" "$R/etc/udhcpc.script" "$R/etc/acpi/PWRF/00000080" "$R"/www/cgi-bin/*
: >"$R/etc/resolv.conf"
echo "root:x:0:0:root:/root:/bin/sh" >"$R/etc/passwd"
echo "root:x:0:" >"$R/etc/group"
if [ "$GUEST_IPERF3" = 1 ]; then
	cp "$(command -v iperf3)" "$R/bin/iperf3"
	copy_libs "$R/bin/iperf3"
fi
(cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9 >"$W/initrd.gz"

# --- disk: FAT superfloppy + SYSLINUX, no partition table, no loop mount ----------------------
log "disk (${DISK_MB} MiB FAT, cmdline: $CMDLINE)"
RAW=$W/disk.raw
truncate -s "${DISK_MB}M" "$RAW"
mkfs.vfat -n KVMTEST -i 4b564d54 "$RAW" >/dev/null
syslinux --install "$RAW"                 # boot sector + ldlinux.sys/.c32, written through mtools
cat >"$W/syslinux.cfg" <<CFG
SERIAL 0 115200
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL /vmlinuz
  INITRD /initrd.gz
  APPEND $CMDLINE
CFG
mcopy -i "$RAW" "$W/syslinux.cfg" ::/syslinux.cfg
# UEFI: GRUB as the removable-media loader, EFI/BOOT/BOOTX64.EFI; it boots the kernel from the
# disk it was itself loaded from ($cmdpath is "(hd0)/EFI/BOOT").
cat >"$W/grub.cfg" <<CFG
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
regexp --set=1:root '^\(([^)]*)\)' "\$cmdpath"
set gfxpayload=text
linux /vmlinuz $CMDLINE
initrd /initrd.gz
boot
CFG
grub-mkstandalone -O x86_64-efi --locales= --fonts= --themes= \
	-o "$W/BOOTX64.EFI" "boot/grub/grub.cfg=$W/grub.cfg"
mmd -i "$RAW" ::/EFI ::/EFI/BOOT
mcopy -i "$RAW" "$W/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$RAW" "$VMLINUZ" ::/vmlinuz
mcopy -i "$RAW" "$W/initrd.gz" ::/initrd.gz
qemu-img convert -c -O qcow2 "$RAW" "$W/guest.qcow2"

mv "$W/initrd.gz" "$OUT/initrd.gz"
mv "$W/guest.qcow2" "$DISK"
echo "$STAMP" >"$W/stamp"
mv "$W/stamp" "$OUT/stamp"
log "built in $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $T0}") s: initrd $(du -k "$OUT/initrd.gz" | cut -f1) KiB, disk $(du -k "$DISK" | cut -f1) KiB"
echo "$DISK"
