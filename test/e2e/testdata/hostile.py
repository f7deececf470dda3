#!/usr/bin/python3
"""A hostile peer for gosec's end-to-end tests, built on scapy.

Run inside the namespace of the gateway whose ESP it captures (gw1): it
captures ESP packets that gw1 sends to gw2 while a ping runs, then injects
below gw1's IP stack, on the wire towards gw2: replays of them, tampered
copies, truncated copies, copies with an unknown SPI, and a forged packet
with a high sequence number. It prints one line per class: "CLASS N".

usage: hostile.py LAN_NS DST IFACE
"""
import subprocess
import sys
import threading
import time

from scapy.all import IP, Raw, conf, sendp, sniff, Ether, get_if_hwaddr

conf.verb = 0
lan_ns, dst, iface = sys.argv[1], sys.argv[2], sys.argv[3]


def ping():
    time.sleep(0.5)
    subprocess.run(["ip", "netns", "exec", lan_ns, "ping", "-c", "8", "-i", "0.2", dst], capture_output=True)


threading.Thread(target=ping).start()
# Only what this gateway sends: the capture also sees the peer's replies,
# and a copy of those would go to our own MAC address and never arrive.
own = get_if_hwaddr(iface)
caught = sniff(iface=iface, filter="ip proto 50 and ether src " + own, count=5, timeout=15)
if len(caught) < 5:
    print("captured", len(caught))
    sys.exit(1)
time.sleep(0.5)


def send(pkts):
    sendp(pkts, iface=iface)
    return len(pkts)


def esp_bytes(p):
    return bytes(p[IP].payload)


def rebuild(p, esp):
    ip = p[IP].copy()
    ip.remove_payload()
    ip.len = None
    ip.chksum = None
    return Ether(src=p[Ether].src, dst=p[Ether].dst) / ip / Raw(esp)


# 1. replays: the same packets again
print("replay", send(caught))

def fresh_seq(b, k):
    """Give b a sequence number gw2 has not seen, so that the replay check
    (which comes first) lets it through to the ICV check."""
    seq = int.from_bytes(b[4:8], "big") + 1000 + k
    b[4:8] = seq.to_bytes(4, "big")


# 2. tampered: one bit flipped in the ciphertext (fresh sequence numbers)
tampered = []
for k, p in enumerate(caught):
    b = bytearray(esp_bytes(p))
    fresh_seq(b, k)
    b[len(b) // 2] ^= 0x01
    tampered.append(rebuild(p, bytes(b)))
print("tampered", send(tampered))

# 3. truncated: cut inside the header, the IV and the ICV
trunc = []
for k, n in enumerate((3, 7, 12, 24)):
    b = bytearray(esp_bytes(caught[0]))
    fresh_seq(b, 100 + k)
    trunc.append(rebuild(caught[0], bytes(b[:n])))
b = bytearray(esp_bytes(caught[1]))
fresh_seq(b, 200)
trunc.append(rebuild(caught[1], bytes(b[:-5])))
print("truncated", send(trunc))

# 4. unknown SPI
unknown = []
for p in caught:
    b = bytearray(esp_bytes(p))
    b[0:4] = b"\xde\xad\xbe\xef"
    unknown.append(rebuild(p, bytes(b)))
print("unknown-spi", send(unknown))

# 5. forged: the right SPI, a sequence number far ahead, garbage for the rest
b = bytearray(esp_bytes(caught[0]))
b[4:8] = (0x7FFFFFF0).to_bytes(4, "big")
for i in range(8, len(b)):
    b[i] = (i * 37) & 0xFF
print("forged", send([rebuild(caught[0], bytes(b))]))
