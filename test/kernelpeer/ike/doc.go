// Package kpike tests gosec's IKEv1 daemon against strongSwan's charon with
// the Linux kernel's own data plane (kernel-netlink, XFRM ESP/AH) in a QEMU
// guest: the image of ../kpeer.sh plus a strongSwan overlay (kpike.sh).
// gosec runs in the network namespace gki-host on 192.0.2.1, the guest is
// 192.0.2.2; ESP tunnel and transport mode over raw IP protocol 50 and AH
// over protocol 51, each side initiating, with the guest's `ip -s xfrm
// state` counters, /proc/net/xfrm_stat and the wire as the evidence.
//
// Run as root: go test ./test/kernelpeer/ike/ (see kpike.sh for by hand).
package kpike
