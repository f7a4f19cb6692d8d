#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Writes the generated seed corpora of the fuzz targets (docs/FUZZING.md).

Into agent/fuzz/corpus-gen/<target>/ (git-ignored, rewritten whole on every run, one file
per seed named by its SHA-1 like libFuzzer's own): real mail from the SpamAssassin corpus
($MAILSTAMP_CORPUS_DIR, every FUZZ_SEED_STEP-th message of file_list.json, default 8, up to
32 KiB) and the core's test fixtures (agent/core/tests/fixtures/**/*.eml), as they are and with
a well-formed Mail-Stamp header on top; Mail-Stamp values of every shape the decoder accepts;
writer records; body text, subjects and addresses for the canon target; the same messages
written in the token alphabet of tokens.txt for message_tokens. Also writes
corpus-gen/message.dict, the multi-byte tokens as a libFuzzer dictionary for the raw target.

Deterministic: the same inputs give the same files (a fixed random seed).
"""

import base64
import hashlib
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent.parent
FIXTURES = ROOT / "agent/core/tests/fixtures"
OUT = FUZZ / "corpus-gen"
MAX_MESSAGE = 32 * 1024  # the message target's -max_len (scripts/fuzz)
MAX_TOKENS = 8 * 1024  # the message_tokens target's -max_len
MAX_TEXT = 4 * 1024  # canon seeds

rng = random.Random(12)
counts = {}


def write(target, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    path = d / hashlib.sha1(data).hexdigest()
    if not path.exists():
        path.write_bytes(data)
        counts[target] = counts.get(target, 0) + 1


def unescape(line):
    out, i = bytearray(), 0
    esc = {"r": b"\r", "n": b"\n", "t": b"\t", "s": b" ", "\\": b"\\"}
    while i < len(line):
        c = line[i]
        if c != "\\":
            out += c.encode()
            i += 1
        elif line[i + 1] == "x":
            out.append(int(line[i + 2 : i + 4], 16))
            i += 4
        else:
            out += esc[line[i + 1]]
            i += 2
    return bytes(out)


TOKENS = [
    unescape(l)
    for l in (FUZZ / "tokens.txt").read_text().splitlines()
    if l and not l.startswith("#")
]
assert len(TOKENS) <= 256, "tokens.txt has more tokens than a byte can name"
SINGLE = {t[0]: i for i, t in enumerate(TOKENS) if len(t) == 1}
MULTI = sorted(((t, i) for i, t in enumerate(TOKENS) if len(t) > 1), key=lambda x: -len(x[0]))
MULTI_RE = re.compile(b"|".join(re.escape(t) for t, _ in MULTI))
MULTI_INDEX = {t: i for t, i in MULTI}


def tokenize(raw):
    """The message in the token alphabet, longest token first; a byte with no token becomes
    NUL (control bytes) or Latin-1 e-acute (other bytes above ASCII)."""
    out, i = bytearray(), 0
    while i < len(raw):
        m = MULTI_RE.match(raw, i)
        if m:
            out.append(MULTI_INDEX[m.group(0)])
            i = m.end()
            continue
        b = raw[i]
        if b in SINGLE:
            out.append(SINGLE[b])
        elif b < 0x20 or b == 0x7F:
            out.append(SINGLE[0])
        else:
            out.append(SINGLE[0xE9])
        i += 1
    return bytes(out)


def crlf(raw):
    return re.sub(rb"(?<!\r)\n", b"\r\n", raw)


def b64(data):
    return base64.b64encode(data).decode()


def hexs(n):
    return "0x" + rng.randbytes(n).hex()


FAMILIES = ["from", "from.local", "from.domain", "to", "cc", "subject", "date", "message-id",
            "parts", "signature", "origin"]
INDEXED = ["text", "html", "att"]


def stamp_value(names=None, mode="d", proof=0, rcpts=2, extra="", fold=None):
    """A Mail-Stamp value the decoder accepts (random salt and digests)."""
    if names is None:
        names = rng.sample(FAMILIES, rng.randint(1, len(FAMILIES)))
        for fam in INDEXED:
            names += [f"{fam}.{i}" for i in range(rng.randint(0, 3))]
    tags = [("v", "1"), ("c", str(rng.choice([1, 11155111, 31337]))), ("r", hexs(20)),
            ("w", hexs(20)), ("m", mode), ("s", b64(rng.randbytes(16))), ("h", ":".join(names)),
            ("d", b64(rng.randbytes(16 * len(names))))]
    if rcpts is not None:
        tags.append(("e", b64(b"".join(sorted({rng.randbytes(8) for _ in range(rcpts)})))))
    if mode == "b":
        tags += [("b", hexs(32)), ("p", b64(rng.randbytes(32 * proof)))]
    value = "; ".join(f"{t}={v}" for t, v in tags) + extra
    if fold:
        # Fold at every space and inside long base64 (FWS is allowed inside a value).
        value = value.replace(" ", fold + "\t")
        value = re.sub(r"([A-Za-z0-9+/]{40})(?=[A-Za-z0-9+/])", lambda m: m.group(1) + fold + " ",
                       value)
    return value


def header_seeds():
    yield stamp_value(["from", "to", "subject", "text.0"], rcpts=1)
    yield stamp_value(["from"], rcpts=None)
    yield stamp_value([], rcpts=0)
    yield stamp_value(["from", "rcpt"], rcpts=1)  # rcpt in h= is refused
    yield stamp_value(["from", "from"], rcpts=1)  # listed twice
    yield stamp_value(["text.15", "att.16"], rcpts=1)
    yield stamp_value(mode="b", proof=0)
    yield stamp_value(mode="b", proof=3)
    yield stamp_value(mode="b", proof=32, rcpts=5)
    yield stamp_value(mode="b", proof=33)
    yield stamp_value(extra="; zz=future; x=1")
    yield stamp_value(rcpts=512)
    yield stamp_value(rcpts=513)
    yield stamp_value(fold="\r\n")
    yield stamp_value(fold="\n", mode="b", proof=2)
    for _ in range(16):
        yield stamp_value(mode=rng.choice("db"), proof=rng.randint(0, 4),
                          rcpts=rng.choice([None, 0, 1, 3, 9]))
    yield "v=1"
    yield "v=2; c=1"
    yield ""


def messages():
    """(name, bytes): the core's fixtures, then the corpus sample."""
    for p in sorted(FIXTURES.rglob("*.eml")):
        yield p.name, p.read_bytes()
    corpus = Path(os.environ.get("MAILSTAMP_CORPUS_DIR", ""))
    listing = corpus / "file_list.json"
    if not listing.is_file():
        sys.exit(f"seeds.py: no corpus at {corpus} (scripts/setup installs it)")
    step = int(os.environ.get("FUZZ_SEED_STEP", "8"))
    for rel in json.loads(listing.read_text())[::step]:
        raw = (corpus / rel).read_bytes()
        if len(raw) <= MAX_MESSAGE:
            yield rel, raw


def body_of(raw):
    m = re.search(rb"\r?\n\r?\n", raw)
    return raw[m.end():] if m else raw


def field(raw, name):
    m = re.search(rb"(?im)^" + name + rb":(.*(?:\r?\n[ \t].*)*)", raw)
    return m.group(1).strip() if m else None


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)

    for v in header_seeds():
        write("mail_stamp_header", v.encode())

    writers = [hexs(20) for _ in range(17)]
    for rec in [
        f"v=mailstamp1; w={writers[0]}",
        f"v=mailstamp1; w={writers[0]},0X{writers[1][2:].upper()}",
        f"v=mailstamp1;w={','.join(writers[:16])}",
        f"v=mailstamp1; w={','.join(writers)}",
        f"v=mailstamp1; x=future; w= {writers[2]} , ",
        f"v=mailstamp1; w={writers[0]}\0v=mailstamp1; w={writers[3]}",
        f"v=spf1 -all\0v=mailstamp1; w={writers[4]}",
        f"v=mailstamp1; w=0x12\0v=mailstamp1; w={writers[5]}",
        "v=mailstamp1",
        "v=mailstamp1; garbage",
        f"v=mailstamp1; w={writers[0]}; w={writers[1]}",
        "v=spf1 include:_spf.example ~all",
    ]:
        write("writer_record", rec.encode())

    for text in [b"Hello  world \r\n\r\nbye\t\r\n\r\n", b"a\rb\n\rc", b"body\n-- \nAlice\n-- \nfooter\n",
                 b"\n\nHi\n\n-- \n\nAlice\n\n-- \nfooter\n\n", "caf\u00e9\u00a0\u2028x\u3000y".encode(),
                 b"[list] [other] Re: hi", b"[] [x", b" <Alice@Example.COM> ", b"a@b@c.d",
                 b"x\r\r\ny\r\n\r\n", b"\x0b\x0c \t"]:
        write("canon", text)

    for i, (name, raw) in enumerate(messages()):
        write("message", raw)
        if len(tok := tokenize(raw)) <= MAX_TOKENS:
            write("message_tokens", tok)
        body = body_of(raw)[:MAX_TEXT]
        write("canon", body)
        for f in (b"Subject", b"From", b"To"):
            if (v := field(raw, f)) is not None:
                write("canon", v)
        if name.endswith(".eml"):
            # Fixtures: also stamped (a header that decodes, digests that do not match) and
            # in CRLF, so the verification paths are reached from the first input on.
            # Every other one batched, with a proof of 0 to 5 nodes.
            mode = "db"[i % 2]
            value = stamp_value(mode=mode, proof=i % 6, fold=chr(10))
            stamped = f"Mail-Stamp: {value}\n".encode() + raw
            write("message", stamped)
            write("message", crlf(stamped))
            if len(tok := tokenize(stamped)) <= MAX_TOKENS:
                write("message_tokens", tok)

    with open(OUT / "message.dict", "w") as f:
        f.write("# Generated by agent/fuzz/seeds.py from tokens.txt: the multi-byte tokens.\n")
        for t, _ in MULTI:
            f.write('"' + "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\x{b:02x}"
                                  for b in t) + '"\n')

    print("seeds: " + ", ".join(f"{t} {n}" for t, n in sorted(counts.items()))
          + f" (in {OUT.relative_to(ROOT)})")


if __name__ == "__main__":
    main()
