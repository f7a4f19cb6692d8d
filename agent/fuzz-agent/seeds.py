#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Writes the generated seed corpora of the agent's session targets (docs/FUZZING.md).

Into agent/fuzz-agent/corpus-gen/<target>/ (git-ignored, rewritten whole on every run, one
file per seed named by its SHA-1): for `milter` and `relay`, whole sessions carrying real
mail — the core's test fixtures (agent/core/tests/fixtures/**/*.eml), as they are and with a
well-formed Mail-Stamp header on top, and every FUZZ_AGENT_SEED_STEP-th message (default 32)
of the SpamAssassin corpus ($MAILSTAMP_CORPUS_DIR), up to 32 KiB — in the input format of each
target (the comments at the top of fuzz_targets/milter.rs and relay.rs): inbound from an
outside client, outbound from a trusted or authenticated one, to addresses of contrib's maps.
Messages, Mail-Stamp values and the corpus walk are agent/fuzz/seeds.py's.

Deterministic: the same inputs give the same files.
"""

import hashlib
import os
import re
import shutil
import sys
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent.parent
OUT = FUZZ / "corpus-gen"
MAX = 32 * 1024  # the session targets' -max_len (scripts/fuzz)

os.environ.setdefault("FUZZ_SEED_STEP", os.environ.get("FUZZ_AGENT_SEED_STEP", "32"))
sys.path.insert(0, str(ROOT / "agent/fuzz"))
import seeds as core  # noqa: E402  (agent/fuzz/seeds.py: messages, stamp values)

counts = {}


def write(target, data):
    if len(data) > MAX:
        return
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    path = d / hashlib.sha1(data).hexdigest()
    if not path.exists():
        path.write_bytes(data)
        counts[target] = counts.get(target, 0) + 1


# (config, client address choice, script lines): who sends, in the milter target's words.
# Config 1 has contrib's maps; 127.0.0.1 is trusted there (outbound), 192.0.2.1 refused.
ENVELOPES = [
    (0, "C mail.a.example 203.0.113.5\nH mail.a.example\nM <ann@a.example> SIZE=100\nR <bob@b.example>"),
    (1, "C mail.a.example 203.0.113.5\nH mail.a.example\nM <ann@a.example>\nR <ceo@b.example>\nR <bob+lists@b.example>"),
    (1, "C localhost 127.0.0.1\nH localhost\nM <ann@a.example>\nR <bob@b.example>\nI 4XyZ1"),
    (2, "C mail.a.example 203.0.113.5\nO ORIGINATING\nH mail.a.example\nA ann\nM <ann@a.example>\nR <bob@b.example>"),
]
PEER = {0: 0, 1: 0, 2: 1, 3: 0}  # envelope → relay client address choice (bits 2–3)


def milter(i, raw):
    cfg, env = ENVELOPES[i % len(ENVELOPES)]
    head = cfg | ((i % 32) << 3)
    write("milter", bytes([head]) + env.encode() + b"\n\n" + raw)


def relay(i, raw):
    cfg, env = ENVELOPES[i % len(ENVELOPES)]
    head = cfg | (PEER[i % len(ENVELOPES)] << 2) | ((i % 16) << 4)
    rcpts = re.findall(r"^R (\S+)", env, re.M)
    mail = re.search(r"^M (.*)", env, re.M).group(1)
    data = core.crlf(raw)
    data = re.sub(rb"(?m)^\.", b"..", data)  # dot-stuffing
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    s = b"EHLO mail.a.example\r\nMAIL FROM:" + mail.encode() + b"\r\n"
    s += b"".join(b"RCPT TO:" + r.encode() + b"\r\n" for r in rcpts)
    s += b"DATA\r\n" + data + b".\r\nQUIT\r\n"
    write("relay", bytes([head]) + s)


HAND_MILTER = [
    # Abort after the headers, then a second message; an unknown command; no connect at all.
    b"\x00C h 203.0.113.5\nH h\nM <a@a.example>\nR <b@b.example>\nX\nM <a@a.example>\nR <b@b.example>\n\n"
    b"From: a@a.example\nSubject: x\n\nhi\n",
    b"\x01C h 192.0.2.1\nH localhost\nU HELP\nM <former.employee@b.example>\nR <trap@b.example>\n\n"
    b"From: a@a.example\n\nx\n",
    b"\x00H h\nM <a@a.example>\nR <b@b.example>\nT\n\nFrom: a@a.example\nX-Mailstamp-Verdict: wanted\n"
    b"Authentication-Results: mx.b.example; mailstamp=pass\n\nbody\n",
    b"\x02C h unix:/run/x\nM <a@a.example> SIZE=999999999\nR <b@b.example>\nE\n\n",
    # Raw: a connect packet, then a header before MAIL, a cut packet.
    b"\x04\x00\x00\x00\x0aCh\x004\x00\x19\x31\x00\x00\x00\x00\x05Lx\x00y\x00\x00\x00\x00\x09M",
]
HAND_RELAY = [
    b"\x00HELO a\r\nMAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nRSET\r\nNOOP\r\nVRFY x\r\n"
    b"DATA\r\nMAIL FROM:<a@a.example>\r\nMAIL FROM:<a@a.example>\r\nDATA\r\nQUIT\r\n",
    b"\x09EHLO a\r\nMAIL FROM:<a@a.example> SIZE=99999999 BODY=8BITMIME\r\nRCPT TO:<trap@b.example>\r\n"
    b"DATA\r\n.\r\nSTARTTLS\r\nAUTH PLAIN x\r\nBDAT 1 LAST\r\nQUIT\r\n",
    b"\x31EHLO a\nMAIL FROM:<>\nRCPT TO:<b@b.example>\nDATA\n..x\n.\n",
    b"\x00" + b"NOOP " + b"x" * 5000 + b"\r\nQUIT\r\n",
    b"\x08EHLO a\r\n", b"\x0cEHLO a\r\n",
]


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    for s in HAND_MILTER:
        write("milter", s)
    for s in HAND_RELAY:
        write("relay", s)
    for i, (name, raw) in enumerate(core.messages()):
        milter(i, raw)
        relay(i, raw)
        if name.endswith(".eml"):
            value = core.stamp_value(mode="db"[i % 2], proof=i % 6, fold="\n")
            stamped = f"Mail-Stamp: {value}\n".encode() + raw
            milter(i + 1, stamped)
            relay(i + 1, stamped)
    print("seeds: " + ", ".join(f"{t} {n}" for t, n in sorted(counts.items()))
          + f" (in {OUT.relative_to(ROOT)})")


if __name__ == "__main__":
    main()
