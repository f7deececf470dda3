#!/bin/bash
# The Linux kernel's own ESP/AH (XFRM) as an independent peer for gosec: a
# small QEMU guest (Debian's kernel, busybox, iproute2) behind a tap device in
# a network namespace. Used by `go test ./test/kernelpeer/` (TestMain runs
# build, up and down) and usable by hand:
#
#   test/kernelpeer/kpeer.sh build    apt-get download Debian's kernel, build build/initramfs.cpio (cached)
#   test/kernelpeer/kpeer.sh up       netns $NS + tap $TAP ($HOST_IP/24), boot the guest ($GUEST_IP/24)
#   test/kernelpeer/kpeer.sh ctl 'ip -s xfrm state' ...   run shell commands in the guest (control channel)
#   test/kernelpeer/kpeer.sh restart  a fresh guest on the same tap, $NS untouched
#   test/kernelpeer/kpeer.sh down     stop the guest (by its PID file) and delete $NS
#
# Topology:
#   netns $NS: $TAP 192.0.2.1/24 ==tap== eth0 192.0.2.2/24 (guest, virtio-net)
#              $LAN 10.1.0.1/24 (veth, the host's inner address for tunnel mode)
#   guest:     dummy0 10.2.0.1/24, route 10.1.0.0/24 via 192.0.2.1 src 10.2.0.1
# An nft table in $NS keeps the host kernel (which may have no ESP/AH) from
# answering ESP/AH with protocol-unreachables and keeps the link private.
#
# Env: NS=gkp-host TAP=gkp-tap0 LAN=gkp-lan0 HOST_IP=192.0.2.1 GUEST_IP=192.0.2.2
#      KVER (Debian kernel ABI, default: what linux-image-amd64 depends on)
#      ACCEL=tcg|kvm MEM=256 BOOT_TIMEOUT=120 KPEER_BUILD (state dir, default ./build)
# Needs root, qemu-system-x86, busybox-static, iproute2, nftables, cpio, kmod,
# gcc and libc6-dev (udpencap is linked statically), and apt (apt-get download).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
B=${KPEER_BUILD:-$HERE/build}
NS=${NS:-gkp-host}
TAP=${TAP:-gkp-tap0}
LAN=${LAN:-gkp-lan0}
HOST_IP=${HOST_IP:-192.0.2.1}
GUEST_IP=${GUEST_IP:-192.0.2.2}
INNER=${INNER:-10.2.0.1/24}
INNERPEER=${INNERPEER:-10.1.0.0/24}
HOST_INNER=${HOST_INNER:-10.1.0.1/24}
ACCEL=${ACCEL:-tcg}
MEM=${MEM:-256}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-120}
MAC=${MAC:-52:54:00:12:34:56}
INITRD=$B/initramfs.cpio
PIDFILE=$B/qemu.pid
CTL=$B/ctl.sock
CONSOLE=$B/console.log

# Modules the guest needs; their dependencies come from modules.dep. echainiv
# needs ecb and drbg, drbg's jitterentropy seed needs sha3_generic. The
# *-ssse3/aesni/clmul ones fail with ENODEV on -cpu qemu64 (harmless).
MODULES="xfrm_user esp4 ah4 xfrm4_tunnel tunnel4 authenc authencesn echainiv seqiv crypto_null
 des_generic des3_ede-x86_64 aesni-intel gcm ghash-generic ctr ccm chacha20poly1305
 chacha-x86_64 chacha_generic poly1305-x86_64 md5 sha1_generic sha256_generic sha512_generic
 ecb cbc drbg sha3_generic jitterentropy_rng virtio_net virtio_pci dummy"

log() { echo "[kpeer.sh $(date +%T)] $*" >&2; }

need_tools() {
  local t missing=()
  for t in qemu-system-x86_64 busybox gcc cpio depmod dpkg-deb nft ip; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  # the initramfs has no libc for busybox: it must be busybox-static's
  [[ -x /bin/busybox ]] && ldd /bin/busybox >/dev/null 2>&1 && missing+=("busybox-static")
  if ((${#missing[@]})); then
    log "missing: ${missing[*]} (apt-get install qemu-system-x86 busybox-static gcc libc6-dev cpio kmod nftables iproute2)"
    exit 1
  fi
}

kver() {
  if [[ -n ${KVER:-} ]]; then echo "$KVER"; return; fi
  apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/.*Depends: linux-image-\(.*\)$/\1/p' | head -1
}

do_build() {
  need_tools
  mkdir -p "$B"
  local kv; kv=$(kver)
  if [[ -z $kv ]]; then
    # no apt metadata: reuse whatever kernel an earlier build fetched
    kv=$(cat "$B/kver" 2>/dev/null || true)
    [[ -n $kv ]] || { log "cannot resolve the kernel version (apt-get update, or set KVER)"; exit 1; }
  fi
  # cached: initramfs newer than the guest's files and built for this
  # kernel and module list
  local f up=1 stamp
  stamp=$(echo "$kv" $MODULES)
  [[ -f $INITRD && -f $B/vmlinuz && $(cat "$B/stamp" 2>/dev/null) == "$stamp" ]] || up=0
  for f in "$HERE"/guest/*; do [[ $INITRD -nt $f ]] || up=0; done
  if ((up)); then log "initramfs.cpio up to date (kernel $kv)"; return; fi

  local deb; deb=$(ls "$B"/linux-image-"$kv"_*.deb 2>/dev/null | head -1 || true)
  if [[ -z $deb ]]; then
    log "apt-get download linux-image-$kv"
    (cd "$B" && apt-get download "linux-image-$kv" >&2)
    deb=$(ls "$B"/linux-image-"$kv"_*.deb | head -1)
  fi
  # the unpacked package (~500 MB) is only needed while building
  local K=$B/kpkg
  rm -rf "$K"; mkdir -p "$K"
  dpkg-deb -x "$deb" "$K"
  [[ -f $K/lib/modules/$kv/modules.dep ]] || depmod -b "$K" "$kv"
  cp -f "$K/boot/vmlinuz-$kv" "$B/vmlinuz"

  local R=$B/rootfs MD=$K/lib/modules/$kv
  rm -rf "$R"; mkdir -p "$R"/{bin,sbin,lib,lib64,proc,sys,dev,tmp,run,etc,lib/modules/$kv}
  cp /bin/busybox "$R/bin/busybox"
  # iproute2's ip (busybox's ip has no xfrm) with its libraries
  local l
  cp -L /bin/ip "$R/sbin/ip"
  for l in $(ldd /bin/ip | grep -o '/[^ ]*'); do
    mkdir -p "$R$(dirname "$l")"; cp -L "$l" "$R$l"
  done
  mkdir -p "$R/etc/iproute2"; cp -r /etc/iproute2/. "$R/etc/iproute2/" 2>/dev/null || true
  # ESP-in-UDP needs a UDP_ENCAP socket in the guest (there is no IKE daemon)
  gcc -static -O2 -o "$R/sbin/udpencap" "$HERE/guest/udpencap.c"
  printf 'root:x:0:0:root:/:/bin/sh\n' > "$R/etc/passwd"
  printf 'root:x:0:\n' > "$R/etc/group"

  # modules in dependency order
  declare -A seen=()
  local order=()
  resolve() {
    local rel=$1 d
    [[ -n ${seen[$rel]:-} ]] && return 0
    seen[$rel]=1
    for d in $(grep -E "^$rel:" "$MD/modules.dep" | cut -d: -f2); do resolve "$d"; done
    order+=("$rel")
  }
  local m rel
  for m in $MODULES; do
    rel=$(grep -E "/$m\.ko(\.xz|\.zst)?:" "$MD/modules.dep" | cut -d: -f1 | head -1 || true)
    if [[ -z $rel ]]; then
      grep -qE "/$m\.ko" "$MD/modules.builtin" && continue
      log "module $m not found (skipped)"; continue
    fi
    resolve "$rel"
  done
  : > "$R/modules.order"
  local RM=$R/lib/modules/$kv
  for rel in "${order[@]}"; do
    mkdir -p "$RM/$(dirname "$rel")"
    case $rel in
      *.xz) xz -dc "$MD/$rel" > "$RM/${rel%.xz}"; rel=${rel%.xz} ;;
      *.zst) zstd -qdc "$MD/$rel" > "$RM/${rel%.zst}"; rel=${rel%.zst} ;;
      *) cp "$MD/$rel" "$RM/$rel" ;;
    esac
    echo "$rel" >> "$R/modules.order"
  done
  # modules.dep/alias for the subset, so that the kernel's autoloading works
  cp "$MD/modules.builtin" "$MD/modules.builtin.modinfo" "$MD/modules.order" "$RM/" 2>/dev/null || true
  depmod -b "$R" "$kv"
  cp "$HERE/guest/guest-init.sh" "$R/init"; chmod 755 "$R/init"
  (cd "$R" && find . -print0 | cpio --null -o -H newc --quiet) > "$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"
  echo "$kv" > "$B/kver"
  echo "$stamp" > "$B/stamp"
  rm -rf "$K" "$R"
  log "initramfs.cpio: $(du -h "$INITRD" | cut -f1), ${#order[@]} modules, kernel $kv"
}

qemu_running() { [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

stop_qemu() {
  if [[ -f $PIDFILE ]]; then
    local pid; pid=$(cat "$PIDFILE")
    # only our own qemu: the PID must still belong to a qemu started with our pidfile
    if kill -0 "$pid" 2>/dev/null && grep -qa -- "$PIDFILE" "/proc/$pid/cmdline" 2>/dev/null; then
      log "stopping qemu pid $pid"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
  fi
  rm -f "$CTL"
}

do_down() {
  stop_qemu
  if ip netns list | grep -qw "^$NS"; then
    # whatever a test left running inside our namespace (a gosec daemon
    # of a test binary that timed out) would keep its devices alive
    local pids
    pids=$(ip netns pids "$NS" 2>/dev/null || true)
    if [[ -n $pids ]]; then
      log "ending processes left in $NS: $(echo $pids)"
      kill $pids 2>/dev/null || true
      sleep 0.5
      pids=$(ip netns pids "$NS" 2>/dev/null || true)
      [[ -z $pids ]] || kill -9 $pids 2>/dev/null || true
    fi
    log "deleting netns $NS"
    ip netns del "$NS"
  fi
}

do_up() {
  if ((${#CTL} > 100)); then
    log "control socket path too long for a unix socket ($CTL); set KPEER_BUILD to a shorter directory"; exit 1
  fi
  [[ -f $INITRD ]] || do_build
  if qemu_running; then log "guest already running (pid $(cat "$PIDFILE"))"; return; fi
  do_down
  ip netns add "$NS"
  ip -n "$NS" link set lo up
  ip netns exec "$NS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  ip -n "$NS" tuntap add dev "$TAP" mode tap
  ip -n "$NS" addr add "$HOST_IP/24" dev "$TAP"
  ip -n "$NS" link set "$TAP" up
  # the host's inner address for tunnel mode (the host kernel may lack dummy)
  ip -n "$NS" link add "$LAN" type veth peer name "${LAN}p"
  ip -n "$NS" addr add "$HOST_INNER" dev "$LAN"
  ip -n "$NS" link set "${LAN}p" up
  ip -n "$NS" link set "$LAN" up
  # Counters per carrier and direction (read by the Go tests): ESP, AH,
  # ESP-in-UDP on 4500, and anything else in the clear. What leaves is
  # counted at the tap's netdev egress hook, which every sender passes:
  # gosec sends ESP/AH through AF_PACKET (no IP output, so the inet output
  # hook never sees it) and everything else through the IP stack.
  ip netns exec "$NS" nft -f - <<EOF
table netdev gkpo {
  counter esp_out {}
  counter ah_out {}
  counter udp4500_out {}
  counter other_out {}
  chain egress {
    type filter hook egress device "$TAP" priority 0; policy accept;
    meta protocol != ip accept
    ip protocol esp counter name esp_out accept
    ip protocol ah counter name ah_out accept
    udp dport 4500 counter name udp4500_out accept
    counter name other_out
  }
}
table inet gkp {
  counter other_in {}
  chain out {
    type filter hook output priority 0; policy accept;
    icmp type destination-unreachable icmp code prot-unreachable drop
    oifname "$TAP" ip daddr != $GUEST_IP drop
    oifname "$TAP" meta nfproto ipv6 drop
  }
  # Inbound IPv4 is counted by the Go tests' own eBPF program at the
  # tap's tc ingress (test/kernelpeer/wirein_test.go): gosec's ingress
  # bypass drops the ESP and AH its receive ring took before any netfilter
  # hook. IPv6 is counted here.
  chain in {
    type filter hook input priority 0; policy accept;
    iifname "$TAP" ip saddr != $GUEST_IP drop
    iifname "$TAP" meta nfproto ipv6 counter name other_in
  }
}
EOF
  boot_guest
}

# boot_guest starts the guest on the tap of an existing $NS and waits for
# it (do_up; do_restart after a guest whose network stalled).
boot_guest() {
  local accel=(-accel "tcg,tb-size=${TB_SIZE:-64}") cpu=(-cpu qemu64)
  [[ $ACCEL == kvm ]] && { accel=(-accel kvm); cpu=(-cpu host); }
  : > "$CONSOLE"
  rm -f "$CTL"
  log "booting guest ($ACCEL, ${MEM} MiB, $GUEST_IP on $TAP in $NS)"
  local t0; t0=$(date +%s.%N)
  ip netns exec "$NS" qemu-system-x86_64 "${accel[@]}" "${cpu[@]}" -smp 1 -m "$MEM" \
    -nodefaults -no-user-config -display none -no-reboot \
    -kernel "$B/vmlinuz" -initrd "$INITRD" \
    -append "console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init mitigations=off tsc=reliable kp.ip=$GUEST_IP/24 kp.peer=$HOST_IP kp.inner=$INNER kp.innerpeer=$INNERPEER" \
    -serial "file:$CONSOLE" -serial "unix:$CTL,server=on,wait=off" \
    -netdev "tap,id=n0,ifname=$TAP,script=no,downscript=no" \
    -device "virtio-net-pci,netdev=n0,mac=$MAC" \
    -pidfile "$PIDFILE" -daemonize || { log "qemu failed to start"; do_down; exit 1; }
  local i=0
  until grep -q KP-READY "$CONSOLE" 2>/dev/null; do
    if ! qemu_running; then log "qemu died"; tail -30 "$CONSOLE" >&2; do_down; exit 1; fi
    sleep 0.2; i=$((i+1))
    if ((i > BOOT_TIMEOUT*5)); then log "guest not ready after ${BOOT_TIMEOUT}s"; tail -30 "$CONSOLE" >&2; do_down; exit 1; fi
  done
  local t1; t1=$(date +%s.%N)
  log "guest ready after $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s; control socket $CTL"
  grep -a "^KP:" "$CONSOLE" | sed 's/^/  guest: /' >&2 || true
}

# do_restart boots a fresh guest and leaves the namespace (and what runs
# in it: a test's gosec daemon) as it is.
do_restart() {
  ip netns list | grep -qw "^$NS" || { log "no namespace $NS ($0 up)"; exit 1; }
  stop_qemu
  boot_guest
}

do_ctl() {
  qemu_running || { log "guest not running ($0 up)"; exit 1; }
  (cd "$HERE" && go run ./kpctl "$CTL" "$@")
}

cmd=${1:-}; shift || true
case $cmd in
  build) do_build ;;
  up) do_up ;;
  down) do_down ;;
  restart) do_restart ;;
  ctl) do_ctl "$@" ;;
  *) sed -n '2,24p' "$0"; exit 2 ;;
esac
