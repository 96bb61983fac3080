#!/bin/busybox sh
# The lab guest's init: virtio modules, a static address from the kernel command line, the echo
# services it listens on, and a command shell on ttyS1 (the host reaches it through a unix socket).
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev 2>/dev/null
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net; do
  insmod /lib/modules/$m.ko 2>/dev/null || echo "insmod $m failed"
done
arg() { sed -n "s/.*[ ^]$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
IP=$(arg gw_ip); NAME=$(arg gw_name); LISTEN=$(arg gw_listen); GW=$(arg gw_gateway)
hostname "${NAME:-guest}"
ip link set lo up
n=0; while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
ip link set eth0 up
[ -n "$IP" ] && ip addr add "$IP" dev eth0
[ -n "$GW" ] && ip route add default via "$GW"
/bin/gw-net serve $(echo "$LISTEN" | tr ',' ' ')
# The command channel: one command per line, run by a plain read loop (no interactive shell: no line
# editing, no prompts, no echo), each with stdin from /dev/null so it cannot eat the channel.
if [ -e /dev/ttyS1 ]; then
  (
    stty -F /dev/ttyS1 raw -echo
    exec </dev/ttyS1 >/dev/ttyS1 2>&1
    while IFS= read -r line; do eval "$line" </dev/null; done
  ) &
fi
echo "GW-READY name=$NAME ip=$IP mac=$(cat /sys/class/net/eth0/address) uptime=$(cut -d' ' -f1 /proc/uptime)"
while true; do sleep 3600; done
