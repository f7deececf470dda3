#!/usr/bin/env bash
# Builds the gosec Debian package with dpkg-deb: bin/gosec_VERSION_ARCH.deb.
# Usage: scripts/mkdeb.sh [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bin}
version=$(sed -n 's/^const Version = "\(.*\)"/\1/p' internal/daemon/daemon.go)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/gosec

install -d "$root/DEBIAN" "$root/usr/sbin" "$root/lib/systemd/system" "$root/usr/share/man/man8" "$root/usr/share/man/man5" \
	"$root/usr/share/doc/gosec/examples" "$root/usr/share/doc/gosec/grafana" "$root/etc/gosec"
# No cgo: gosec start --user changes every thread's credentials.
CGO_ENABLED=0 go build -trimpath -ldflags=-s -o "$root/usr/sbin/gosec" ./cmd/gosec
install -m 0644 dist/gosec.service "$root/lib/systemd/system/gosec.service"
gzip -9n -c dist/gosec.8 >"$root/usr/share/man/man8/gosec.8.gz"
# Generated from internal/conf's keyword tables (make man); TestManPageCurrent keeps it current.
gzip -9n -c dist/gosec.conf.5 >"$root/usr/share/man/man5/gosec.conf.5.gz"
install -m 0644 packaging/etc/ipsec.conf "$root/etc/gosec/ipsec.conf"
install -m 0644 demo/ipsec.conf "$root/usr/share/doc/gosec/examples/ipsec.conf"
install -m 0644 demo/ipsec.secrets "$root/usr/share/doc/gosec/examples/ipsec.secrets"
install -m 0644 dist/grafana/gosec-dashboard.json "$root/usr/share/doc/gosec/grafana/gosec-dashboard.json"
install -m 0644 LICENSE "$root/usr/share/doc/gosec/copyright"
install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$root/DEBIAN/"
install -m 0644 packaging/deb/conffiles "$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" packaging/deb/control.in >"$root/DEBIAN/control"
(cd "$root" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
mkdir -p "$out"
deb=$out/gosec_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
