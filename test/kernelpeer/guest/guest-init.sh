#!/bin/busybox sh
# /init of the kernel-peer initramfs (Debian's kernel + busybox + iproute2),
# built by kpeer.sh. Console: ttyS0 (kernel log and this script's progress).
# Control channel: ttyS1, see ctl_loop below and ctl.go.
# Kernel command line knobs (all optional):
#   kp.ip=192.0.2.2/24  kp.peer=192.0.2.1  kp.inner=10.2.0.1/24  kp.innerpeer=10.1.0.0/24
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s /bin
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
# Debian's busybox-static prefers its own applets over PATH (standalone
# shell), so "ip" would be busybox's ip without xfrm. Functions win over applets.
ip() { /sbin/ip "$@"; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp

log() { echo "KP: $* (uptime $(cut -d' ' -f1 /proc/uptime))" > /dev/ttyS0; }
log "init start"

KP_IP=192.0.2.2/24; KP_PEER=192.0.2.1; KP_INNER=10.2.0.1/24; KP_INNERPEER=10.1.0.0/24
for a in $(cat /proc/cmdline); do
  case "$a" in
    kp.ip=*) KP_IP=${a#kp.ip=} ;;
    kp.peer=*) KP_PEER=${a#kp.peer=} ;;
    kp.inner=*) KP_INNER=${a#kp.inner=} ;;
    kp.innerpeer=*) KP_INNERPEER=${a#kp.innerpeer=} ;;
  esac
done

# modules, already in dependency order (see kpeer.sh)
nok=0; nfail=0
while read -r m; do
  [ -n "$m" ] || continue
  if insmod "/lib/modules/$(uname -r)/$m" 2>/tmp/insmod.err; then nok=$((nok+1)); else
    nfail=$((nfail+1)); echo "KP: insmod $m: $(cat /tmp/insmod.err)" > /dev/ttyS0; fi
done < /modules.order
log "modules loaded ok=$nok failed=$nfail"
# let the kernel autoload anything else that is in the initramfs
echo /bin/modprobe > /proc/sys/kernel/modprobe

ip link set lo up
i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 2>/dev/null
sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 2>/dev/null
ip link set eth0 up
ip addr add "$KP_IP" dev eth0
[ -e /sys/class/net/dummy0 ] || ip link add dummy0 type dummy   # dummy.ko makes dummy0 itself
ip link set dummy0 up
ip addr add "$KP_INNER" dev dummy0
# traffic to the host's inner network leaves through eth0 (the out policy catches it)
ip route add "$KP_INNERPEER" via "$KP_PEER" dev eth0 src "${KP_INNER%/*}"
sysctl -qw net.ipv4.conf.eth0.rp_filter=0 net.ipv4.conf.dummy0.rp_filter=0 2>/dev/null
# ESP-in-UDP (encap espinudp ... 4500) is only decapsulated on a UDP_ENCAP
# socket; an IKE daemon would hold it, here udpencap does.
/sbin/udpencap 4500 > /dev/ttyS0 2>&1 &
log "net up: $(ip -4 -o addr show dev eth0 | awk '{print $4}')"

# Control channel on ttyS1. Request:  @@<nonce>@@<length>@@<command>
#                           Answer:   <output lines> then __KP_RC=<status>@@<nonce>
# The loop must NOT run as PID 1: every orphan (a background job) is
# re-parented to PID 1, and a SIGCHLD that lands while busybox's "read" is
# half-way through a line makes it restart the read and drop the bytes read
# so far. The length check catches any other damage; status 254 = framing
# error, command not run (the client resends).
ctl_loop() {
  stty -F /dev/ttyS1 raw -echo 2>/dev/null
  while true; do
    while IFS= read -r line; do
      case "$line" in
        @@*@@*@@*)
          rest=${line#@@}; nonce=${rest%%@@*}; rest=${rest#*@@}; n=${rest%%@@*}; cmd=${rest#*@@}
          if [ "${#cmd}" != "$n" ]; then
            echo "__KP_FRAMING_ERROR got ${#cmd} want $n" > /dev/ttyS1
            echo "__KP_RC=254@@$nonce" > /dev/ttyS1; continue
          fi ;;
        *) echo "__KP_BAD_LINE" > /dev/ttyS1; continue ;;
      esac
      case "$cmd" in
        __KP_POWEROFF) sync; poweroff -f ;;
      esac
      ( eval "$cmd" ) > /dev/ttyS1 2>&1 < /dev/null
      echo "__KP_RC=$?@@$nonce" > /dev/ttyS1
    done < /dev/ttyS1
    sleep 0.2
  done
}
ctl_loop &
echo "KP-READY" > /dev/ttyS0
# PID 1 only reaps orphans from here on
while true; do wait; sleep 1; done
