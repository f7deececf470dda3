#!/bin/bash
# The kernel peer of ../kpeer.sh with strongSwan's charon (kernel-netlink, so
# the guest kernel's own XFRM ESP/AH) in it: an independent IKEv1 peer for
# gosec's daemon. Used by `go test ./test/kernelpeer/ike/` (TestMain runs
# build, up and down) and usable by hand:
#
#   test/kernelpeer/ike/kpike.sh build   ../kpeer.sh build into build/plain, then
#                                        build/ss/initramfs.cpio = that image + a strongSwan overlay
#                                        (KPIKE_PEER=libreswan: build/lsw, a Libreswan overlay)
#   test/kernelpeer/ike/kpike.sh up      boot it (../kpeer.sh up with KPEER_BUILD=build/ss)
#   test/kernelpeer/ike/kpike.sh ctl 'ike start' 'ip -s xfrm state' ...
#   test/kernelpeer/ike/kpike.sh restart a fresh guest on the same tap (../kpeer.sh restart)
#   test/kernelpeer/ike/kpike.sh down
#
# kpeer.sh is driven unchanged: it builds the plain image (kernel, modules,
# busybox, iproute2, /init) into build/plain. The strongSwan overlay is a
# second cpio archive appended to that initramfs (the kernel unpacks
# concatenated archives in order, later entries replace earlier ones):
#   charon, starter, stroke and the plugins of guest/strongswan.conf, unpacked
#   from Debian's .debs (apt-get download + dpkg-deb -x, never installed),
#   every library ldd reports for them (from this host, also Debian 12),
#   /sbin/ike (guest/ike), /etc/strongswan.conf, and a /sbin/udpencap that
#   does nothing (charon holds UDP 4500 itself; pluto likewise).
#
# KPIKE_PEER=libreswan builds and runs Libreswan's pluto instead, in
# build/lsw (XFRM, so again the guest kernel's ESP and AH): pluto, whack and
# addconn (pluto runs it) from Debian's libreswan .deb, their ldd
# libraries, the NSS modules NSS opens with dlopen (softokn, freebl, dbm:
# ldd does not list them), an empty NSS database made here with certutil,
# the package's _updown scripts with a /usr/sbin/ipsec that runs them
# (guest/ipsec-libreswan: pluto's default leftupdown is "ipsec _updown"),
# and guest/ike-libreswan as /sbin/ike (the same verbs as guest/ike).
#
# Env (passed on to kpeer.sh): NS=gki-host TAP=gki-tap0 LAN=gki-lan0
#   HOST_IP=192.0.2.1 GUEST_IP=192.0.2.2 KPIKE_BUILD (state dir, default ./build)
#   KPIKE_PEER (strongswan, the default, or libreswan)
#   and kpeer.sh's KVER ACCEL MEM BOOT_TIMEOUT.
# Needs what kpeer.sh needs, plus the host libraries charon links against
# (libgmp10 libssl3 libcap2 libsystemd0) or pluto does (LSW_LIBPKGS below,
# with libnss3-tools for certutil); installed when missing.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
KPEER=$HERE/../kpeer.sh
B=${KPIKE_BUILD:-$HERE/build}
export NS=${NS:-gki-host} TAP=${TAP:-gki-tap0} LAN=${LAN:-gki-lan0}
export HOST_IP=${HOST_IP:-192.0.2.1} GUEST_IP=${GUEST_IP:-192.0.2.2}
PLAIN=$B/plain
PEER=${KPIKE_PEER:-strongswan}
case $PEER in
  strongswan) SS=$B/ss ;;
  libreswan) SS=$B/lsw ;;
  *) echo "kpike.sh: KPIKE_PEER=$PEER: strongswan or libreswan" >&2; exit 2 ;;
esac

log() { echo "[kpike.sh $(date +%T)] $*" >&2; }

SS_DEBS="strongswan-charon strongswan-starter strongswan-libcharon libstrongswan libstrongswan-standard-plugins libstrongswan-extra-plugins"
# host packages that provide the libraries ldd must find
SS_LIBPKGS="libgmp10 libssl3 libcap2 libsystemd0"
# charon plugins loaded in the guest (see guest/strongswan.conf)
SS_PLUGINS=$(sed -n 's/^[[:space:]]*load = //p' "$HERE/guest/strongswan.conf")

fetch() { # fetch TREE PKG... : download (once) and unpack into $B/TREE
  local tree=$B/$1 D=$B/debs p; shift
  mkdir -p "$D"
  for p in "$@"; do
    ls "$D/${p}_"*.deb >/dev/null 2>&1 || (cd "$D" && apt-get download "$p" >&2)
  done
  if [[ ! -d $tree ]] || [[ -n $(find "$D" -name '*.deb' -newer "$tree" 2>/dev/null | head -1) ]]; then
    rm -rf "$tree"; mkdir -p "$tree"
    for p in "$@"; do dpkg-deb -x "$(ls "$D/${p}_"*.deb | head -1)" "$tree"; done
  fi
}

need() { # install missing host library packages
  local m=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || m+=("$p"); done
  ((${#m[@]})) || return 0
  log "installing ${m[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${m[@]}" >&2
}

# copy_elf R TREE SRC: SRC (a path inside TREE) -> R/SRC, plus its ldd libraries
copy_elf() {
  local R=$1 tree=$2 src=$3 f l miss to
  f=$tree$src
  mkdir -p "$R$(dirname "$src")"; cp -L "$f" "$R$src"
  miss=$(LD_LIBRARY_PATH=$tree/usr/lib/ipsec ldd "$f" 2>/dev/null | grep 'not found' || true)
  [[ -z $miss ]] || { log "$src: $miss"; exit 1; }
  for l in $(LD_LIBRARY_PATH=$tree/usr/lib/ipsec ldd "$f" | grep -o '/[^ ]*'); do
    to=${l#$tree}
    [[ -e $R$to ]] && continue
    mkdir -p "$R$(dirname "$to")"; cp -L "$l" "$R$to"
  done
}

LSW_DEBS="libreswan"
# host packages that provide the libraries ldd must find, the NSS modules
# and certutil
LSW_LIBPKGS="libnss3 libnspr4 libunbound8 libldns3 libevent-core-2.1-7 libevent-pthreads-2.1-7 libcurl3-nss libldap-2.5-0 libaudit1 libcap-ng0 libpam0g libselinux1 libsystemd0 libsqlite3-0 libnss3-tools"

# pack R: the plain image with overlay R appended, as $SS/initramfs.cpio
pack() {
  local R=$1 out=$SS/initramfs.cpio
  mkdir -p "$SS"
  cp -f "$PLAIN/vmlinuz" "$SS/vmlinuz"
  { cat "$PLAIN/initramfs.cpio"; (cd "$R" && find . -print0 | cpio --null -o -H newc --quiet); } > "$out.tmp"
  mv "$out.tmp" "$out"
  rm -rf "$R"
}

do_build_libreswan() {
  need $LSW_LIBPKGS
  fetch lsw-root $LSW_DEBS
  local T=$B/lsw-root R=$B/overlay f l
  rm -rf "$R"; mkdir -p "$R"/{etc/ipsec.d,run/pluto,var/lib/ipsec,sbin,usr/sbin}
  ln -sfn /run "$R/var/run"
  printf '127.0.0.1 localhost\n' > "$R/etc/hosts"; : > "$R/etc/resolv.conf"
  # pluto runs addconn itself to load ipsec.conf's conns
  for f in /usr/libexec/ipsec/pluto /usr/libexec/ipsec/whack /usr/libexec/ipsec/addconn; do copy_elf "$R" "$T" "$f"; done
  # NSS opens its soft token and freebl with dlopen
  for l in $(dpkg -L libnss3 | grep -E '/lib(softokn3|freebl3|freeblpriv3|nssdbm3)\.so$'); do copy_elf "$R" "" "$l"; done
  mkdir -p "$R/var/lib/ipsec/nss"
  certutil -N -d "sql:$R/var/lib/ipsec/nss" --empty-password
  echo libreswan > "$R/etc/kp-ike"
  cp "$HERE/guest/ike-libreswan" "$R/sbin/ike"
  # the default leftupdown, "ipsec _updown": Debian's scripts, and an ipsec
  # that runs them
  cp "$T/usr/libexec/ipsec/_updown" "$T/usr/libexec/ipsec/_updown.xfrm" "$R/usr/libexec/ipsec/"
  cp "$HERE/guest/ipsec-libreswan" "$R/usr/sbin/ipsec"
  chmod 755 "$R/usr/sbin/ipsec"
  cp "$HERE/guest/udpencap" "$R/sbin/udpencap"
  chmod 755 "$R/sbin/ike" "$R/sbin/udpencap"
  pack "$R"
  log "Libreswan initramfs: $(du -h "$SS/initramfs.cpio" | cut -f1) ($(dpkg-deb -f "$(ls "$B"/debs/libreswan_*.deb | head -1)" Version))"
}

do_build() {
  KPEER_BUILD=$PLAIN "$KPEER" build
  local out=$SS/initramfs.cpio f up=1
  # cached: newer than the plain image and every input of the overlay
  for f in "$PLAIN/initramfs.cpio" "$HERE"/guest/* "$0"; do [[ -f $out && $out -nt $f ]] || up=0; done
  if ((up)); then log "$PEER initramfs up to date"; return; fi
  if [[ $PEER == libreswan ]]; then do_build_libreswan; return; fi
  need $SS_LIBPKGS
  fetch ss-root $SS_DEBS
  local T=$B/ss-root R=$B/overlay p
  rm -rf "$R"; mkdir -p "$R"/{etc/ipsec.d,run,var,sbin,usr/sbin}
  ln -sfn /run "$R/var/run"            # starter writes /var/run/*.pid
  printf '127.0.0.1 localhost\n' > "$R/etc/hosts"; : > "$R/etc/resolv.conf"
  for p in cacerts certs private crls ocspcerts aacerts acerts reqs policies; do mkdir -p "$R/etc/ipsec.d/$p"; done
  for f in /usr/lib/ipsec/charon /usr/lib/ipsec/starter /usr/lib/ipsec/stroke; do copy_elf "$R" "$T" "$f"; done
  for p in $SS_PLUGINS; do copy_elf "$R" "$T" "/usr/lib/ipsec/plugins/libstrongswan-$p.so"; done
  cp "$HERE/guest/strongswan.conf" "$R/etc/strongswan.conf"
  echo strongswan > "$R/etc/kp-ike"
  cp "$HERE/guest/ike" "$R/sbin/ike"
  cp "$HERE/guest/udpencap" "$R/sbin/udpencap"
  chmod 755 "$R/sbin/ike" "$R/sbin/udpencap"
  pack "$R"
  log "strongSwan initramfs: $(du -h "$out" | cut -f1) ($(dpkg-deb -f "$(ls "$B"/debs/strongswan-charon_*.deb | head -1)" Version))"
}

cmd=${1:-}; shift || true
case $cmd in
  build) do_build ;;
  up) [[ -f $SS/initramfs.cpio ]] || do_build; KPEER_BUILD=$SS "$KPEER" up ;;
  down) KPEER_BUILD=$SS "$KPEER" down ;;
  restart) KPEER_BUILD=$SS "$KPEER" restart ;;
  ctl) KPEER_BUILD=$SS "$KPEER" ctl "$@" ;;
  *) sed -n '2,40p' "$0"; exit 2 ;;
esac
