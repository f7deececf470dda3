#!/usr/bin/python3
"""Collect the upstream corpus: real IKEv1 ipsec.conf files of the
strongSwan, Libreswan and Openswan test suites and examples, copied
verbatim from the git mirrors (the `fetch` tool of the gosec sessions puts
them under /work/.mirror) into SOURCE/PATH, with MANIFEST recording
repository, tag, commit and path of each. The files are data: gosec's
TestUpstreamCorpus loads them and compares `gosec conf check`'s output
with SOURCE.golden.
"""
import os, re, subprocess

MIRROR = "/work/.mirror"
OUT = os.path.dirname(os.path.abspath(__file__))

def git(repo, *args):
    return subprocess.run(["git", "-C", f"{MIRROR}/{repo}/repo", *args],
                          check=True, capture_output=True).stdout

manifest = []

def collect(source, repo, tag, paths, where=lambda p: p):
    """Copy paths; where(p) is the path in the corpus (the repository's
    path, or where the suite's harness installs the file)."""
    commit = git(repo, "rev-parse", tag + "^{commit}").decode().strip()
    for p in paths:
        data = git(repo, "show", f"{commit}:{p}")
        dst = os.path.join(OUT, source, where(p))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "wb") as f:
            f.write(data)
        manifest.append(f"{source}/{where(p)} {repo.replace('+', '/')} {tag} {commit} {p}")
    print(source, len(paths))

def ls(repo, tag, prefix):
    return git(repo, "ls-tree", "-r", "--name-only", tag, prefix).decode().split("\n")

# strongSwan 4.6.4 (pluto, the 4.x era): every IKEv1 scenario's ipsec.conf.
ss4 = [p for p in ls("strongswan+strongswan", "4.6.4", "testing/tests/ikev1")
       if p.endswith("/etc/ipsec.conf")]
# The files they include from /etc, where the harness installs the
# scenario's hosts/HOST/etc (starter-includes: ipsec.connections...).
ss4 += [p for p in ls("strongswan+strongswan", "4.6.4", "testing/tests/ikev1")
        if re.search(r"/hosts/[^/]+/etc/ipsec\.(connections|host|peers/)", p)]
collect("strongswan-4.6.4", "strongswan+strongswan", "4.6.4", ss4)

# strongSwan 5.9.14: the IKEv1 scenarios of the stroke-era ipsec.conf.
ss5 = [p for p in ls("strongswan+strongswan", "5.9.14", "testing/tests/ikev1-stroke")
       if p.endswith("/etc/ipsec.conf")]
collect("strongswan-5.9.14", "strongswan+strongswan", "5.9.14", ss5)

# Libreswan v3.32 (IKEv1 by default: ikev2=no): the .conf files of every
# eighth test of testing/pluto (sorted), the examples of docs/examples,
# and the files the tests include from /testing (the harness mounts the
# source tree there).
def is_ikev1_ipsec_conf(repo, tag, p):
    """An ipsec.conf (not a strongswan.conf or other .conf) written for
    IKEv1: no ikev2=insist/yes/propose or keyexchange=ikev2 in it."""
    text = git(repo, "show", f"{tag}:{p}").decode(errors="replace")
    if p.endswith("strongswan.conf") or not re.search(r"(?m)^(conn\s|config\s+setup)", text):
        return False
    return not re.search(r"(?m)^\s*(ikev2\s*=\s*(insist|yes|propose|always)|keyexchange\s*=\s*ikev2)\b", text)

lp = sorted(p for p in ls("libreswan+libreswan", "v3.32", "testing/pluto")
            if re.fullmatch(r"testing/pluto/[^/]+/[^/]+\.conf", p) and "ikev2" not in p.split("/")[2])
dirs = sorted({p.split("/")[2] for p in lp})[::5]
lsel = [p for p in lp if p.split("/")[2] in dirs and is_ikev1_ipsec_conf("libreswan+libreswan", "v3.32", p)]
lex = [p for p in ls("libreswan+libreswan", "v3.32", "docs/examples") if p.endswith(".conf") and "sysctl" not in p]
inc = set()
for p in lsel:
    for m in re.finditer(rb"(?m)^\s*include\s+/testing/(\S+)", git("libreswan+libreswan", "show", f"v3.32:{p}")):
        inc.add("testing/" + m.group(1).decode())
collect("libreswan-v3.32", "libreswan+libreswan", "v3.32", lsel + lex + sorted(inc))

# The files the Libreswan tests include from /etc/ipsec.d, where the
# harness installs testing/baseconfigs/all/etc.
collect("libreswan-v3.32", "libreswan+libreswan", "v3.32",
        [p for p in ls("libreswan+libreswan", "v3.32", "testing/baseconfigs/all/etc/ipsec.d") if p.endswith(".conf")],
        lambda p: p.replace("testing/baseconfigs/all/", ""))

# Openswan 2.4.4's test suite, the FreeS/WAN-era one ("FreeS/WAN IPsec
# configuration file", version 2.0): testing/pluto/*/*.conf, with
# /etc/ipsec.d/ipsec.conf.common where its harness installs it.
o24 = sorted(p for p in ls("xelerance+Openswan", "2.4.4", "testing/pluto")
             if re.fullmatch(r"testing/pluto/[^/]+/[^/]+\.conf", p) and is_ikev1_ipsec_conf("xelerance+Openswan", "2.4.4", p))
collect("openswan-2.4.4", "xelerance+Openswan", "2.4.4", o24)
collect("openswan-2.4.4", "xelerance+Openswan", "2.4.4", ["testing/baseconfigs/all/etc/ipsec.d/ipsec.conf.common"],
        lambda p: p.replace("testing/baseconfigs/all/", ""))

# Openswan 2.6.51: its test suite's configurations (tests/) and examples.
osw = [p for p in ls("xelerance+Openswan", "v2.6.51", "tests") if p.endswith(".conf")]
collect("openswan-v2.6.51", "xelerance+Openswan", "v2.6.51", osw)

# ipsec.secrets of the same suites (PSK, FreeS/WAN RSA key blocks,
# XAUTH, EAP, certificates' keys).
def secrets(repo, tag, prefix, cond=lambda p: True):
    return [p for p in ls(repo, tag, prefix) if (p.endswith("ipsec.secrets") or p.endswith(".secrets")) and cond(p)]
collect("strongswan-4.6.4", "strongswan+strongswan", "4.6.4",
        secrets("strongswan+strongswan", "4.6.4", "testing/tests/ikev1") + secrets("strongswan+strongswan", "4.6.4", "testing/hosts"))
collect("strongswan-5.9.14", "strongswan+strongswan", "5.9.14", secrets("strongswan+strongswan", "5.9.14", "testing/tests/ikev1-stroke"))
collect("libreswan-v3.32", "libreswan+libreswan", "v3.32", secrets("libreswan+libreswan", "v3.32", "testing/baseconfigs"))
collect("openswan-v2.6.51", "xelerance+Openswan", "v2.6.51", secrets("xelerance+Openswan", "v2.6.51", "tests"))

with open(os.path.join(OUT, "MANIFEST"), "w") as f:
    f.write("# corpus-path repository tag commit path-in-repository\n")
    f.write("\n".join(sorted(manifest)) + "\n")
