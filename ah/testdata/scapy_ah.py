#!/usr/bin/python3
"""Independent AH (RFC 4302) reference for gosec's ah package tests.

Reads one JSON request per line on stdin and writes one JSON answer per line
on stdout. Hex strings carry packets and keys. Requests:

  {"op": "verify", "alg": ..., "key": ..., "spi": N, "esn_en": bool,
   "esn": HI, "mode": "transport"|"tunnel", "pkt": HEX}
      scapy checks the ICV of an AH packet and removes AH.
      -> {"ok": true, "plain": HEX} or {"ok": false, "err": "..."}

  {"op": "seal", "alg": ..., "key": ..., "spi": N, "seq": LOW32,
   "esn_en": bool, "esn": HI, "mode": ..., "plain": HEX,
   "tunnel_hdr": HEX}
      scapy builds the AH packet; in tunnel mode tunnel_hdr is the outer IPv4
      header (options allowed; scapy fills protocol, length and checksum).
      -> {"ok": true, "pkt": HEX}

  {"op": "linux8", "key": ..., "spi": N, "seq": N, "plain": HEX}
      Builds, without scapy, a transport-mode HMAC-SHA2-256-128 AH packet the
      way Linux sends it without `flag align4`: payload length 6 (32 octets),
      4 octets of zero padding after the 16-octet ICV. The ICV is computed
      with python's hmac module over a header zeroed here by hand (TOS,
      flags+fragment offset, TTL, checksum; the input must have no options).
      -> {"ok": true, "pkt": HEX}

alg is a scapy integrity algorithm name: HMAC-MD5-96, HMAC-SHA1-96,
SHA2-256-128, SHA2-384-192, SHA2-512-256.

scapy's known deviations (it keeps the fragment offset in the ICV and
mis-parses multi-slot Timestamp options) do not matter for the packets the
Go test sends: no fragments and no Timestamp options.
"""

import hashlib
import hmac
import json
import struct
import sys

from scapy.layers.inet import IP
from scapy.layers.ipsec import AH, SecurityAssociation
from scapy.compat import raw


def ip_checksum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def verify(req):
    kw = {}
    if req["mode"] == "tunnel":
        kw["tunnel_header"] = IP()
    sa = SecurityAssociation(AH, spi=req["spi"], auth_algo=req["alg"],
                             auth_key=bytes.fromhex(req["key"]),
                             esn_en=req.get("esn_en", False),
                             esn=req.get("esn", 0), **kw)
    pkt = IP(bytes.fromhex(req["pkt"]))
    out = sa.decrypt(pkt)
    return {"ok": True, "plain": raw(out).hex()}


def seal(req):
    kw = {}
    if req["mode"] == "tunnel":
        kw["tunnel_header"] = IP(bytes.fromhex(req["tunnel_hdr"]))
    sa = SecurityAssociation(AH, spi=req["spi"], seq_num=req["seq"],
                             auth_algo=req["alg"],
                             auth_key=bytes.fromhex(req["key"]),
                             esn_en=req.get("esn_en", False),
                             esn=req.get("esn", 0), **kw)
    out = sa.encrypt(IP(bytes.fromhex(req["plain"])))
    return {"ok": True, "pkt": raw(out).hex()}


def linux8(req):
    key = bytes.fromhex(req["key"])
    plain = bytes.fromhex(req["plain"])
    ihl = (plain[0] & 0x0F) * 4
    if ihl != 20:
        raise ValueError("linux8 wants a packet without IPv4 options")
    hdr, payload = bytearray(plain[:20]), plain[20:]
    nh = hdr[9]
    ah_len = 32  # 12 + 16-octet ICV + 4 octets of padding, 8-octet aligned
    hdr[9] = 51
    struct.pack_into("!H", hdr, 2, len(plain) + ah_len)
    ah = bytearray(struct.pack("!BBHII", nh, ah_len // 4 - 2, 0,
                               req["spi"], req["seq"]) + bytes(20))
    zeroed = bytearray(hdr)
    zeroed[1] = 0             # TOS
    zeroed[6:8] = b"\0\0"     # flags + fragment offset
    zeroed[8] = 0             # TTL
    zeroed[10:12] = b"\0\0"   # checksum
    icv = hmac.new(key, bytes(zeroed) + bytes(ah) + payload,
                   hashlib.sha256).digest()[:16]
    ah[12:28] = icv
    hdr[10:12] = b"\0\0"
    struct.pack_into("!H", hdr, 10, ip_checksum(bytes(hdr)))
    return {"ok": True, "pkt": (bytes(hdr) + bytes(ah) + payload).hex()}


OPS = {"verify": verify, "seal": seal, "linux8": linux8}


def main():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        req = json.loads(line)
        try:
            ans = OPS[req["op"]](req)
        except Exception as e:  # report, keep serving
            ans = {"ok": False, "err": "%s: %s" % (type(e).__name__, e)}
        sys.stdout.write(json.dumps(ans) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
