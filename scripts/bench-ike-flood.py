#!/usr/bin/python3
"""IKEv1 flood generator for scripts/bench-ike.sh (test namespaces only).

  bench-ike-flood.py mm1 DST SECONDS SRCNET   Main Mode first messages at the
      transform cap (512 transforms in 3 proposals, the acceptable
      aes128-sha1-modp2048 last, about 20 KB, sent as IPv4 fragments) with
      fresh cookies, from random spoofed sources in SRCNET (a /16), as fast
      as this process can (raw socket).
  bench-ike-flood.py mm3 DST SECONDS SRC      Main Mode first and third
      messages from the reachable address SRC: every MM2 that comes back is
      answered with an MM3 carrying a 3072-bit KE (the responder's
      Diffie-Hellman work), as fast as answers come.

Prints one line: messages sent, seconds, rate.
"""
import os
import random
import select
import socket
import struct
import sys
import time


def attrs(pairs):
    return b"".join(struct.pack("!HH", 0x8000 | t, v) for t, v in pairs)


def transform(num, last, a):
    body = struct.pack("!BBH", num, 1, 0) + a  # KEY_IKE
    return struct.pack("!BBH", 0 if last else 3, 0, 4 + len(body)) + body


def proposal(num, last, transforms):
    ts = b"".join(transform(i + 1, i == len(transforms) - 1, a) for i, a in enumerate(transforms))
    body = struct.pack("!BBBB", num, 1, 0, len(transforms)) + ts
    return struct.pack("!BBH", 0 if last else 2, 0, 4 + len(body)) + body


def sa_payload(proposals):
    ps = b"".join(proposal(i + 1, i == len(proposals) - 1, p) for i, p in enumerate(proposals))
    body = struct.pack("!II", 1, 1) + ps
    return struct.pack("!BBH", 0, 0, 4 + len(body)) + body


def isakmp(icky, rcky, first, body):
    return icky + rcky + struct.pack("!BBBBII", first, 0x10, 2, 0, 0, 28 + len(body)) + body


def big_mm1_body():
    # 511 unacceptable transforms (AES-192/MD5, groups 1..30), then ours.
    ts = []
    for i in range(511):
        ts.append(attrs([(1, 7), (14, 192), (2, 1), (3, 1), (4, 1 + i % 30), (11, 1), (12, 3600)]))
    ts.append(attrs([(1, 7), (14, 128), (2, 2), (3, 1), (4, 14), (11, 1), (12, 3600)]))
    return sa_payload([ts[0:255], ts[255:510], ts[510:512]])


def flood_mm1(dst, secs, srcnet):
    body = big_mm1_body()
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    dst_b = socket.inet_aton(dst)
    net = socket.inet_aton(srcnet)[:2]
    msg_rest = isakmp(b"\0" * 8, b"\0" * 8, 1, body)[8:]
    udp_len = 8 + 8 + len(msg_rest)
    n, ipid = 0, random.randrange(65536)
    end = time.time() + secs
    start = time.time()
    while time.time() < end:
        for _ in range(32):
            src = net + bytes((random.randrange(256), random.randrange(1, 255)))
            udp = struct.pack("!HHHH", 500, 500, udp_len, 0) + os.urandom(8) + msg_rest
            ipid = (ipid + 1) & 0xFFFF
            off = 0
            while off < len(udp):
                chunk = udp[off:off + 1480]
                more = off + 1480 < len(udp)
                fl = (0x2000 if more else 0) | (off >> 3)
                hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(chunk), ipid, fl, 64, 17, 0, src, dst_b)
                try:
                    s.sendto(hdr + chunk, (dst, 0))
                except OSError:
                    time.sleep(0.001)
                off += 1480
            n += 1
    return n, time.time() - start


def flood_mm3(dst, secs, src):
    # aes128-sha256-modp3072, what the bench's "flood" conn accepts
    body = sa_payload([[attrs([(1, 7), (14, 128), (2, 4), (3, 1), (4, 15), (11, 1), (12, 3600)])]])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((src, 0))
    s.setblocking(False)
    n = mm3 = 0
    end = time.time() + secs
    start = time.time()
    while time.time() < end:
        for _ in range(16):
            try:
                s.sendto(isakmp(os.urandom(8), b"\0" * 8, 1, body), (dst, 500))
                n += 1
            except BlockingIOError:
                break
        deadline = time.time() + 0.005
        while time.time() < deadline:
            r, _, _ = select.select([s], [], [], 0.002)
            if not r:
                continue
            try:
                m, _ = s.recvfrom(65536)
            except BlockingIOError:
                continue
            if len(m) < 28 or m[18] != 2 or m[16] != 1:
                continue  # only MM2 (first payload SA) is answered
            nonce = os.urandom(32)
            ke = os.urandom(384)
            kp = struct.pack("!BBH", 10, 0, 4 + len(ke)) + ke
            npl = struct.pack("!BBH", 0, 0, 4 + len(nonce)) + nonce
            try:
                s.sendto(isakmp(m[0:8], m[8:16], 4, kp + npl), (dst, 500))
                n += 1
                mm3 += 1
            except BlockingIOError:
                pass
    return n, time.time() - start


def main():
    mode, dst, secs, arg = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    if mode == "mm1":
        n, t = flood_mm1(dst, secs, arg)
    else:
        n, t = flood_mm3(dst, secs, arg)
    print("%s flood: %d messages in %.1f s (%.0f/s)" % (mode, n, t, n / t))


if __name__ == "__main__":
    main()
