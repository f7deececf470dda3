#!/bin/sh
# Installs, runs and purges the gosec package in a throw-away root: an
# overlay of this Debian 12 system (copy-on-write, discarded afterwards)
# in a private mount namespace, where no gosec package or user exists.
# Usage (as root): deb-in-root.sh DEB WORKDIR
# Prints "STEP name" before each step; exits non-zero at the first failure.
set -eu
deb=$1 work=$2
mkdir -p "$work/upper" "$work/work" "$work/root"
exec unshare --mount --propagation private sh -eu -c '
deb=$1 work=$2 root=$2/root
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/work" "$root"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -t sysfs sysfs "$root/sys"
mount -t tmpfs tmpfs "$root/run"
mount -t tmpfs tmpfs "$root/tmp"
cp "$deb" "$root/tmp/gosec.deb"
in_root() { chroot "$root" "$@"; }

echo "STEP fresh"
if in_root getent passwd gosec; then echo "a gosec user exists already"; exit 1; fi
if in_root dpkg -s gosec >/dev/null 2>&1; then echo "gosec is installed already"; exit 1; fi

echo "STEP install"
in_root dpkg -i /tmp/gosec.deb

echo "STEP user"
line=$(in_root getent passwd gosec)
echo "$line"
uid=$(echo "$line" | cut -d: -f3)
[ "$uid" -lt 1000 ] || { echo "gosec is not a system user (uid $uid)"; exit 1; }
echo "$line" | grep -q ":/usr/sbin/nologin$"
[ "$(in_root stat -c "%U:%G %a" /etc/gosec/ipsec.secrets)" = "gosec:gosec 600" ]
[ "$(in_root stat -c "%U %a" /usr/sbin/gosec)" = "root 755" ]
in_root test -f /usr/share/man/man8/gosec.8.gz
in_root test -f /usr/share/man/man5/gosec.conf.5.gz
# The installed gosec.conf(5) documents what the installed binary accepts.
in_root sh -c "zcat /usr/share/man/man5/gosec.conf.5.gz | grep -q ^.B.charondebug"
in_root test -f /usr/share/doc/gosec/grafana/gosec-dashboard.json

echo "STEP verify"
out=$(in_root systemd-analyze verify /lib/systemd/system/gosec.service 2>&1) || { echo "$out"; exit 1; }
[ -z "$out" ] || { echo "systemd-analyze verify: $out"; exit 1; }
in_root systemd-analyze security --offline=true /lib/systemd/system/gosec.service | tail -1

echo "STEP conf-check"
in_root /usr/sbin/gosec conf check

echo "STEP run"
# The unit'"'"'s command line with the unit'"'"'s privileges: user gosec, ambient
# CAP_NET_ADMIN/NET_RAW/NET_BIND_SERVICE and CAP_BPF (for the start-up) and
# nothing else, no_new_privs, in a network namespace of its own; /run/gosec
# as RuntimeDirectory= makes it.
install -d -m 0700 -o "$uid" -g "$uid" "$root/run/gosec"
caps=+net_admin,+net_raw,+net_bind_service,+bpf
in_root unshare --net sh -eu -c "
ip link set lo up
setpriv --reuid gosec --regid gosec --init-groups --inh-caps $caps --ambient-caps $caps --bounding-set -all,$caps --no-new-privs \
	/usr/sbin/gosec start --nofork --config /etc/gosec/ipsec.conf --log-format json >/tmp/gosec.log 2>&1 &
pid=\$!
for i in \$(seq 100); do /usr/sbin/gosec status --socket /run/gosec/gosec.ctl >/dev/null 2>&1 && break; sleep 0.1; done
/usr/sbin/gosec statusall || { cat /tmp/gosec.log; exit 1; }
grep -E \"^(Uid|CapEff|CapBnd|CapAmb|NoNewPrivs)\" /proc/\$pid/status
/usr/sbin/gosec stop
wait \$pid
cat /tmp/gosec.log
"

echo "STEP purge"
in_root dpkg --purge gosec
for f in /usr/sbin/gosec /lib/systemd/system/gosec.service /etc/gosec /usr/share/man/man8/gosec.8.gz /usr/share/man/man5/gosec.conf.5.gz; do
	if in_root test -e "$f"; then echo "$f is still there after purge"; exit 1; fi
done
if in_root dpkg -s gosec >/dev/null 2>&1; then echo "dpkg still knows gosec"; exit 1; fi
echo "STEP done"
' sh "$deb" "$work"
