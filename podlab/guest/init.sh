#!/bin/sh
# /init of the kvm-manager test guest (busybox sh as PID 1). Everything a test can observe is
# printed on the serial console as one-line KVMTEST_* markers; see README.md beside this file.
export PATH=/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run

up() { read -r UP _ </proc/uptime; }   # sets $UP (seconds since boot) without forking
mark() { echo "KVMTEST_$*"; }
log() { echo "kvmtest: $*"; }          # non-marker diagnostics

echo                                    # the kernel's real-mode setup leaves BIOS escape codes mid-line
up; mark INIT uptime=$UP
dmesg -n 1                              # keep kernel messages off the console (still in dmesg)
hostname kvmtest-guest
echo kvmtest-guest >/etc/hostname
echo 0 >/proc/sys/net/ipv4/icmp_echo_ignore_all
ip link set dev lo up

# Modules, in dependency order (build.sh wrote the list with modprobe --show-depends).
while read -r ko; do
	insmod "/lib/modules/$ko" || log "insmod $ko failed"
done </lib/modules/load.list
up; log "modules loaded, uptime=$UP"

# ACPI power button (button.ko + evdev.ko): acpid runs /etc/acpi/PWRF/00000080.
# acpid opens /dev/input/event0..N once, at start: start it after the modules.
acpid -l /run/acpid.log || log "acpid failed to start"

# Network: every NIC (eth0, eth1, ...) asks DHCP for its address, in the background while the
# drives are looked at; eth0 also asks DHCPv6 (kvm-manager serves it on a dual-stack pod).
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
sleep 0.2                               # NICs are probed together: let the others appear too
LINK=no
for dev in /sys/class/net/eth*; do
	[ -e "$dev" ] || continue
	LINK=yes
	iface=${dev##*/}
	ip link set dev "$iface" up
	read -r MAC <"$dev/address"
	read -r MTU <"$dev/mtu"
	mark LINK iface=$iface mac=$MAC mtu=$MTU
	# -f: stay in the foreground (of this background job) and keep renewing the lease;
	# retries forever, so a lease obtained after KVMTEST_DHCP_FAILED still prints KVMTEST_DHCP.
	udhcpc -f -i "$iface" -s /etc/udhcpc.script -t 5 -T 1 -A 1 \
		-O subnet -O router -O dns -O domain -O search -O mtu -O hostname \
		-O staticroutes -O broadcast >"/run/udhcpc-$iface.log" 2>&1 &
done
if [ $LINK = yes ]; then
	up; DHCP_DEADLINE=$((${UP%.*} + 20))
	(
		if lease=$(dhcp6c eth0 2>/dev/null) && set -- $lease && ip -6 addr add "$1/64" dev eth0; then
			echo "$1" >/www/ip6
			up; mark DHCP6 iface=eth0 ip=$1 dns=$2 uptime=$UP
		else
			mark DHCP6_NONE iface=eth0
		fi
	) &
else
	mark NO_LINK iface=eth0
fi

# Config drive: an ISO9660 filesystem labelled config-2 (OpenStack) or cidata (NoCloud).
iso_label() {   # prints the volume id of ISO9660 device $1; fails if it is not ISO9660
	dd if="$1" of=/tmp/pvd bs=2048 skip=16 count=1 2>/dev/null || return 1
	[ "$(dd if=/tmp/pvd bs=1 skip=1 count=5 2>/dev/null)" = CD001 ] || return 1
	dd if=/tmp/pvd bs=1 skip=40 count=32 2>/dev/null | tr -d ' \000'
}
CFG_DEV= CFG_LABEL= UD=
i=0
while :; do
	for d in /dev/sr0 /dev/sr1 /dev/vd[b-z] /dev/sd[a-z]; do
		[ -b "$d" ] || continue
		l=$(iso_label "$d") || continue
		case "$l" in config-2|CONFIG-2|cidata|CIDATA) ;; *) continue ;; esac
		mount -t iso9660 -o ro "$d" /mnt/cfg 2>/dev/null || continue
		CFG_DEV=$d CFG_LABEL=$l
		break 2
	done
	i=$((i + 1))
	[ $i -ge 30 ] && break
	sleep 0.1
done
if [ -n "$CFG_DEV" ]; then
	mark CFGDRIVE label=$CFG_LABEL dev=$CFG_DEV
	ln -s /mnt/cfg /www/cfg              # browsable as http://VM/cfg/
	case "$CFG_LABEL" in
	config-2|CONFIG-2) UD=/mnt/cfg/openstack/latest/user_data ;;
	*) UD=/mnt/cfg/user-data ;;
	esac
	if [ -f "$UD" ]; then
		S=no
		[ "$(head -c 2 "$UD")" = '#!' ] && S=yes
		mark USERDATA file=$UD script=$S
		[ $S = yes ] || UD=
	else
		UD=
	fi
else
	mark NO_CFGDRIVE
fi

# Persistent disk: the boot disk itself (FAT superfloppy labelled KVMTEST, no partition table),
# read-write, on whatever bus it came: /dev/vda (virtio), /dev/sda (virtio-scsi, SATA, IDE).
fat_label() {   # the FAT volume label of device $1 (FAT12/16: offset 43)
	dd if="$1" bs=1 skip=43 count=11 2>/dev/null | tr -d ' \000'
}
BOOT=
i=0
while [ -z "$BOOT" ] && [ $i -lt 30 ]; do
	for d in /dev/vd[a-z] /dev/sd[a-z]; do
		[ -b "$d" ] && [ "$(fat_label "$d")" = KVMTEST ] && { BOOT=$d; break; }
	done
	[ -n "$BOOT" ] || { sleep 0.1; i=$((i + 1)); }
done
BOOT_NAME=${BOOT#/dev/}
# sync(2) on FAT sends no cache flush to the disk, so with QEMU's default writeback cache a
# "sync" then kill -9 of QEMU loses the qcow2 metadata of new clusters (the file is gone on
# the next boot). Switching the disk to write-through makes QEMU flush every write.
for cache in /sys/block/$BOOT_NAME/cache_type /sys/block/$BOOT_NAME/device/scsi_disk/*/cache_type; do
	[ -e "$cache" ] && echo "write through" >"$cache" 2>/dev/null
done
M=no
[ -n "$BOOT" ] && mount -t vfat -o rw,utf8 "$BOOT" /mnt/disk 2>/dev/null && M=yes
mark DISK dev=${BOOT:-none} mounted=$M

# The virtual hardware, as the guest sees it: the drivers from the boot disk up to its PCI
# controller, the NIC's driver, the SMBIOS identity, the disk's size, UEFI or not, and every
# other disk with its serial number and size.
drivers() {   # the drivers of $1 and of every device above it, nearest first, once each
	p=$(readlink -f "$1") out=
	while [ "$p" != / ] && [ -n "$p" ]; do
		[ -e "$p/driver" ] && out="$out,$(basename "$(readlink "$p/driver")")"
		p=${p%/*}
	done
	echo "${out#,}"
}
disk_serial() {   # virtio-blk: sysfs "serial"; SCSI and ATA disks: VPD page 0x80 after its header
	s=$(cat "$1/serial" 2>/dev/null || tail -c +5 "$1/device/vpd_pg80" 2>/dev/null | tr -d ' \000')
	echo "${s:--}"
}
read -r SECTORS </sys/block/$BOOT_NAME/size 2>/dev/null || SECTORS=0
DATA=
for b in /sys/block/vd[a-z] /sys/block/sd[a-z]; do
	[ -e "$b" ] && [ "${b##*/}" != "$BOOT_NAME" ] || continue
	read -r n <"$b/size"
	serial=$(disk_serial "$b")
	DATA="$DATA,${b##*/}:$serial:$((n * 512))"
done
[ -d /sys/firmware/efi ] && EFI=yes || EFI=no
mark HW disk=$BOOT_NAME disk_drivers=$(drivers /sys/block/$BOOT_NAME/device) \
	disk_bytes=$((SECTORS * 512)) nic=$(basename "$(readlink /sys/class/net/eth0/device/driver 2>/dev/null)") \
	serial=$(tr ' ' _ </sys/class/dmi/id/product_serial 2>/dev/null) \
	uuid=$(cat /sys/class/dmi/id/product_uuid 2>/dev/null) efi=$EFI data=${DATA#,}

# Wait for the first lease (the udhcpc script prints KVMTEST_DHCP and touches /run/dhcp.bound).
if [ $LINK = yes ]; then
	while [ ! -e /run/dhcp.bound ]; do
		up
		[ ${UP%.*} -ge $DHCP_DEADLINE ] && break
		sleep 0.1
	done
	[ -e /run/dhcp.bound ] || { up; mark DHCP_FAILED uptime=$UP; }
fi

# Services: HTTP :80 (page, /cgi-bin/sh, /cfg/), UDP echo :7, TCP banners :5900 and :9100.
[ -e /www/index.html ] || printf '<html><body><pre>\nKVMTEST_GUEST hostname=%s ip=\n</pre></body></html>\n' \
	"$(hostname)" >/www/index.html
httpd -p 80 -h /www
udpecho 7 &
for p in 5900 9100; do
	nc -ll -p $p -e echo "KVMTEST_GUEST tcp/$p" >/dev/null 2>&1 &
done
i=0
while [ $i -lt 50 ]; do          # READY only once every socket is listening
	s=$(netstat -ltun 2>/dev/null)
	n=0
	for want in 'tcp.*:80 ' 'tcp.*:5900 ' 'tcp.*:9100 ' 'udp.*:7 '; do
		echo "$s" | grep -q "$want" && n=$((n + 1))
	done
	[ $n = 4 ] && break
	i=$((i + 1))
	sleep 0.1
done
[ $n = 4 ] || log "not every service is listening: $s"

# The VGA screen (VNC, the web console) gets a banner that a test reads off a screenshot.
printf '\033[2J\033[H\n\n    KVMTEST SCREEN READY\n\n    %s\n' "$(hostname)" >/dev/tty1 ||
	log "no VGA console"

up; mark READY uptime=$UP

# User-data shell script (#!...) runs after READY, output on the console.
if [ -n "$UD" ]; then
	(cd / && sh "$UD" </dev/null)
	mark USERDATA_DONE rc=$?
fi

# PID 1 must never exit; its waits also reap orphaned processes.
while :; do sleep 3600; done
