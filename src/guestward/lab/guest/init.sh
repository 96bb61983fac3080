#!/bin/busybox sh
# The lab guest's init: virtio modules, a static address from the kernel command line, the echo
# services it listens on, and a command channel on a virtio-serial port (a unix socket on the host).
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev 2>/dev/null
for m in $(cat /lib/modules/order); do   # dependency order, written by the host (lab/assets.py)
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
# The command channel: a virtio-serial port (a plain character device: no UART, no line discipline,
# no echo), one command per line, run by a read loop; each command's stdin is /dev/null so it cannot
# eat the channel; background commands keep running after their line returns.
CMD=; n=0
while [ -z "$CMD" ] && [ $n -lt 100 ]; do
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = org.guestward.command.0 ] && CMD=/dev/$(basename "$p")
  done
  [ -z "$CMD" ] && sleep 0.1; n=$((n+1))
done
if [ -n "$CMD" ] && [ -e "$CMD" ]; then
  # One open, read-write (a virtio port opens once). A read while the host side is closed is EOF, so
  # the port is reopened after every session; what arrives while it is closed is lost, which is why
  # the host repeats a hello line until one is answered (lab/console.py).
  while true; do
    (
      exec <>"$CMD" >&0 2>&0
      n=0
      while IFS= read -r line; do
        # A command's output goes through a file of its own: what it leaves running in the background
        # holds that file, never the port (which must be free to reopen).
        n=$((n+1)); eval "$line" </dev/null >/tmp/cmd.$n 2>&1; cat /tmp/cmd.$n; rm -f /tmp/cmd.$n
      done
    )
    sleep 0.1   # nobody connected: a read is EOF at once
  done &
else
  echo "GW-ERROR no command channel: $(ls /sys/class/virtio-ports /dev 2>&1 | tr '\n' ' ')"
fi
echo "GW-READY name=$NAME ip=$IP mac=$(cat /sys/class/net/eth0/address) uptime=$(cut -d' ' -f1 /proc/uptime)"
while true; do sleep 3600; done
