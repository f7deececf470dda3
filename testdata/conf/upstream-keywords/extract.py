#!/usr/bin/python3
"""Extract the keyword lists of the upstream ipsec.conf parsers.

Run from anywhere, with the upstream git mirrors at the paths below (the
`fetch` tool of the gosec sessions puts them there):

    testdata/conf/upstream-keywords/extract.py

Writes one NAME.txt per source: a header naming repository, commit and
path, then one "SECTION KEYWORD" line per keyword (SECTION is setup or
conn), left/right keywords expanded to both spellings. Only names are
extracted: no upstream code is copied. internal/conf's TestUpstreamKeywords
checks that gosec recognises every keyword of every list.
"""
import os, re, subprocess, sys

MIRROR = "/work/.mirror"
OUT = os.path.dirname(os.path.abspath(__file__))

def git(repo, *args):
    return subprocess.run(["git", "-C", f"{MIRROR}/{repo}/repo", *args],
                          check=True, capture_output=True, text=True).stdout

def show(repo, rev, path):
    commit = git(repo, "rev-parse", rev + "^{commit}").strip()
    return commit, git(repo, "show", f"{commit}:{path}")

def write(name, sources, pairs):
    with open(os.path.join(OUT, name + ".txt"), "w") as f:
        for repo, rev, commit, path in sources:
            f.write(f"# {repo.replace('+', '/')} {rev} {commit} {path}\n")
        # Libreswan v5.4 spells one name "dns-match-id," in its table.
        pairs = [(sec, kw.rstrip(",")) for sec, kw in pairs]
        for sec, kw in sorted(set(pairs)):
            f.write(f"{sec} {kw}\n")
    print(name, len(set(pairs)))

def lr(kw):
    return ["left" + kw, "right" + kw]

# strongSwan's starter: src/starter/keywords.txt (gperf input). The
# keyword's section comes from keywords.h: tokens below KW_SETUP_LAST...
# the file has no section marks, so the setup set is taken from the
# config setup keywords listed in keywords.h's "config setup keywords"
# range.
def strongswan(rev):
    repo = "strongswan+strongswan"
    commit, txt = show(repo, rev, "src/starter/keywords.txt")
    hpath = "src/starter/keywords.h.in"
    try:
        _, hdr = show(repo, rev, hpath)
    except subprocess.CalledProcessError:
        hpath = "src/starter/keywords.h"
        _, hdr = show(repo, rev, hpath)
    # Sections: the token ranges KW_SETUP_FIRST..KW_SETUP_LAST and
    # KW_CA_FIRST..KW_CA_LAST of the kw_token_t enum; the rest is conn.
    enum = hdr[hdr.index("kw_token_t"):] if "enum kw_token_t" in hdr else hdr
    tokens = [t for t in re.findall(r"^\s*(KW_\w+)\s*[,=]", enum, re.M)]
    defs = dict(re.findall(r"#define\s+(KW_\w+)\s+(KW_\w+)", hdr))
    def rng(name):
        a, b = defs.get(f"KW_{name}_FIRST"), defs.get(f"KW_{name}_LAST")
        if a in tokens and b in tokens:
            return set(tokens[tokens.index(a):tokens.index(b) + 1])
        return set()
    setup, ca = rng("SETUP") | rng("PLUTO") | rng("KLIPS"), rng("CA")
    pairs = []
    body = txt.split("%%")[1]
    for line in body.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 2:
            continue
        kw, tok = parts[0], parts[1]
        pairs.append(("setup" if tok in setup else "ca" if tok in ca else "conn", kw))
    write(f"strongswan-{rev}", [(repo, rev, commit, "src/starter/keywords.txt"),
                                (repo, rev, commit, hpath)], pairs)

# Libreswan 3.x / Openswan 2.6: lib/libipsecconf/keywords.c, the
# ipsec_conf_keywords[] table: { "name", validity, type, field, ... }.
def keywords_c(repo, rev, name, path="lib/libipsecconf/keywords.c"):
    commit, txt = show(repo, rev, path)
    m = re.search(r"ipsec_conf_keywords(?:_v2)?\[\]\s*=\s*\{(.*?)\n\};", txt, re.S)
    pairs = []
    for em in re.finditer(r'\{\s*"([^"]*)"\s*,\s*([^,]+),', m.group(1)):
        kw, validity = em.group(1), em.group(2)
        sec = "setup" if "kv_config" in validity else "conn"
        if "kv_leftright" in validity:
            pairs += [(sec, k) for k in lr(kw)]
        else:
            pairs.append((sec, kw))
    write(name, [(repo, rev, commit, path)], pairs)

# Libreswan 5.x: lib/libswan/ipsecconf/{conn,setup}.c, entries written
# with macros whose first argument is the name (K, KWS, A, O, ...).
def libreswan5(rev):
    repo = "libreswan+libreswan"
    pairs, sources = [], []
    for sec, path in (("conn", "lib/libswan/ipsecconf/conn.c"),
                      ("setup", "lib/libswan/ipsecconf/setup.c")):
        commit, txt = show(repo, rev, path)
        sources.append((repo, rev, commit, path))
        for em in re.finditer(r'^\s*[A-Z]+\(\s*"([^"]*)"\s*(?:,\s*([^,)]*))?', txt, re.M):
            kw, validity = em.group(1), em.group(2) or ""
            if "kv_leftright" in validity:
                pairs += [(sec, k) for k in lr(kw)]
            else:
                pairs.append((sec, kw))
    write(f"libreswan-{rev}", sources, pairs)

# FreeS/WAN 2.x: ipsec.conf(5) as Openswan 2.0.0 imported it from
# FreeS/WAN 2.04 (programs/_confread/ipsec.conf.5): each keyword is a
# ".TP" paragraph headed ".B keyword". Sections: the man page documents
# conn parameters before "CONFIG SECTIONS" and setup ones after.
def freeswan():
    repo, rev = "xelerance+Openswan", "6a3b72d55d831a275934773b40228809d9101eb2"
    path = "programs/_confread/ipsec.conf.5"
    commit, txt = show(repo, rev, path)
    pairs, sec = [], "conn"
    lines = txt.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(".SH") and "CONFIG SECTIONS" in line:
            sec = "setup"
        if line.startswith(".SH") and "IMPLICIT CONNS" in line:
            sec = None
        if sec and line.startswith(".TP") and i + 1 < len(lines):
            m = re.match(r"\.B\s+([a-z][a-z0-9_]*)\s*$", lines[i + 1])
            if m:
                kw = m.group(1)
                pairs.append((sec, kw))
                if kw.startswith("left"):  # the page documents left*, meaning both
                    pairs.append((sec, "right" + kw[4:]))
    write("freeswan-2.04-man", [(repo, "openswan 2.0.0 import of FreeS/WAN", commit, path)], pairs)

strongswan("5.9.14")
strongswan("4.6.4")
strongswan("4.2.0")
keywords_c("libreswan+libreswan", "v3.32", "libreswan-v3.32")
keywords_c("libreswan+libreswan", "v4.15", "libreswan-v4.15")
libreswan5("v5.4")
keywords_c("xelerance+Openswan", "v2.6.51", "openswan-v2.6.51")
freeswan()
