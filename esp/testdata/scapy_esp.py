#!/usr/bin/python3
"""Independent ESP (RFC 4303) reference for gosec's esp package tests.

Reads one JSON request per line on stdin, writes one JSON answer per line on
stdout. Hex strings carry packets and keys. Common fields:

  crypt, ckey   scapy CRYPT_ALGOS name and key (salt/nonce appended for
                AES-CTR, AES-GCM, CHACHA20-POLY1305, as scapy wants it)
  auth, akey    scapy AUTH_ALGOS name and key ("NULL" for AEAD)
  spi, mode     SPI and "transport" or "tunnel"
  esn_en, esn   extended sequence numbers and the high 32 bits

Requests:
  {"op": "open", ..., "pkt": HEX}
      Decrypt and ICV-check a whole IPv4 packet carrying ESP.
      -> {"ok": true, "plain": HEX}   (the IPv4 packet without ESP; in tunnel
         mode the inner packet) or {"ok": false, "err": ...}
  {"op": "seal", ..., "seq": LOW32, "iv": HEX or null, "plain": HEX,
   "tunnel_hdr": HEX}
      Build the ESP packet (transport: around the IPv4 packet plain; tunnel:
      plain behind tunnel_hdr). -> {"ok": true, "pkt": HEX}

scapy 2.5 does not put the ESN high bits into the ESP HMAC (it does for the
AEAD AAD). So when esn_en is set with an HMAC algorithm, this script checks
and computes the ICV itself with python's hmac module over
ESP header..next header || ESN high 32 bits (RFC 4303 2.2.1), and lets scapy
do only the decryption/encryption (auth NULL). Everything else is scapy's.
"""

import hashlib
import hmac
import json
import struct
import sys

from scapy.compat import raw
from scapy.layers.inet import IP
from scapy.layers.ipsec import ESP, SecurityAssociation

HMACS = {
    "HMAC-MD5-96": (hashlib.md5, 12),
    "HMAC-SHA1-96": (hashlib.sha1, 12),
    "SHA2-256-128": (hashlib.sha256, 16),
    "SHA2-384-192": (hashlib.sha384, 24),
    "SHA2-512-256": (hashlib.sha512, 32),
}


def manual_icv(req):
    """True when this script, not scapy, must handle the ICV."""
    return req.get("esn_en", False) and req["auth"] in HMACS


def make_sa(req, auth_null=False, tunnel_hdr=None):
    kw = {}
    if req["mode"] == "tunnel":
        kw["tunnel_header"] = IP(bytes.fromhex(tunnel_hdr)) if tunnel_hdr else IP()
    auth = "NULL" if auth_null else req["auth"]
    akey = None if auth == "NULL" else bytes.fromhex(req["akey"])
    ckey = bytes.fromhex(req["ckey"]) if req["ckey"] else None
    return SecurityAssociation(ESP, spi=req["spi"], seq_num=req.get("seq", 1),
                               crypt_algo=req["crypt"], crypt_key=ckey,
                               auth_algo=auth, auth_key=akey,
                               esn_en=req.get("esn_en", False),
                               esn=req.get("esn", 0), **kw)


def op_open(req):
    pkt = bytes.fromhex(req["pkt"])
    if manual_icv(req):
        h, n = HMACS[req["auth"]]
        ip = IP(pkt)
        hl = ip.ihl * 4
        esp, icv = pkt[hl:len(pkt) - n], pkt[len(pkt) - n:]
        want = hmac.new(bytes.fromhex(req["akey"]),
                        esp + struct.pack("!L", req["esn"]), h).digest()[:n]
        if not hmac.compare_digest(icv, want):
            return {"ok": False, "err": "IPSecIntegrityError: manual ESN ICV mismatch"}
        stripped = bytearray(pkt[:len(pkt) - n])
        struct.pack_into("!H", stripped, 2, len(stripped))
        sa = make_sa(req, auth_null=True)
        out = sa.decrypt(IP(bytes(stripped)), verify=False)
    else:
        sa = make_sa(req)
        out = sa.decrypt(IP(pkt))
    return {"ok": True, "plain": raw(out).hex()}


def op_seal(req):
    iv = bytes.fromhex(req["iv"]) if req.get("iv") else None
    plain = IP(bytes.fromhex(req["plain"]))
    if manual_icv(req):
        h, n = HMACS[req["auth"]]
        sa = make_sa(req, auth_null=True, tunnel_hdr=req.get("tunnel_hdr"))
        out = bytearray(raw(sa.encrypt(plain, iv=iv)))
        hl = (out[0] & 15) * 4
        icv = hmac.new(bytes.fromhex(req["akey"]),
                       bytes(out[hl:]) + struct.pack("!L", req["esn"]), h).digest()[:n]
        out += icv
        struct.pack_into("!H", out, 2, len(out))
        ip = IP(bytes(out))
        del ip.chksum
        out = raw(ip)
    else:
        sa = make_sa(req, tunnel_hdr=req.get("tunnel_hdr"))
        out = raw(sa.encrypt(plain, iv=iv))
    return {"ok": True, "pkt": out.hex()}


OPS = {"open": op_open, "seal": op_seal}


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
