#!/bin/bash
# Baseline for benchmarks/startup.py: the original kvm-manager's setup (a bash `startvm`,
# 2017), rebuilt from its description in the project's reference notes: the same tools in the
# same order, its download and its exec of QEMU left out. It does less than kvm-manager: TCP
# only, no checks, no loopback or IPv6 rules, a random MAC, and it cannot run twice.
#
# Run inside a fresh pod namespace with IMAGE_DIR, IMG_TARGET, VM_DIR, RUN_DIR, HOSTNAME,
# RESOLV_CONF and USERDATA_PATH set.
set -euo pipefail
VM_IP=${VM_IP:-192.168.254.2}
VM_GW=${VM_GW:-192.168.254.1}
POD_IP=$(ip -4 -o addr show dev eth0 | awk '{split($4, a, "/"); print a[1]; exit}')
DNS=$(awk '/^nameserver/ {printf "%s%s", sep, $2; sep = ","}' "$RESOLV_CONF")
SEARCH=$(awk '/^search/ {$1 = ""; print substr($0, 2)}' "$RESOLV_CONF" | tr ' ' ',')
MAC=52:54:00$(od -An -N3 -tx1 /dev/urandom | tr ' ' ':')

qemu-img create -q -f qcow2 -F qcow2 -b "$IMAGE_DIR/$IMG_TARGET" "$VM_DIR/$HOSTNAME.qcow2"

ip link add br0 type bridge
ip addr add "$VM_GW/30" dev br0
ip link set br0 up
ip tuntap add dev tap0 mode tap
ip link set tap0 master br0 up
echo 1 >/proc/sys/net/ipv4/ip_forward

iptables-legacy -t nat -A PREROUTING -p tcp ! --dport 5900 -d "$POD_IP" -j DNAT --to "$VM_IP"
iptables-legacy -t nat -A POSTROUTING -s "$VM_IP" -j SNAT --to "$POD_IP"

dnsmasq --port=0 --user=root --group= --interface=br0 --bind-interfaces \
	--dhcp-range="$VM_IP,$VM_IP" --dhcp-host="$MAC,$HOSTNAME,$VM_IP,infinite" \
	--dhcp-option=option:router,"$VM_GW" --dhcp-option=option:netmask,255.255.255.252 \
	--dhcp-option=option:dns-server,"$DNS" --dhcp-option=option:domain-search,"$SEARCH" \
	--pid-file="$RUN_DIR/dnsmasq.pid" --dhcp-leasefile="$RUN_DIR/dnsmasq.leases"

drive=$RUN_DIR/config-drive
mkdir -p "$drive/openstack/2012-08-10"
printf '{"uuid": "%s", "hostname": "%s"}\n' "$(cat /proc/sys/kernel/random/uuid)" "$HOSTNAME" \
	>"$drive/openstack/2012-08-10/meta_data.json"
cp "$USERDATA_PATH" "$drive/openstack/2012-08-10/user_data"
ln -s 2012-08-10 "$drive/openstack/latest"
genisoimage -quiet -R -V config-2 -o "$RUN_DIR/config-drive.iso" "$drive"
