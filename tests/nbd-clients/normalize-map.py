#!/usr/bin/python3
"""Normalizes a block-status map so that two servers' maps compare by meaning, not by how
they split extents: adjacent extents with the same description are merged.

  normalize-map.py nbdinfo < `nbdinfo --map[=CONTEXT]` output
  normalize-map.py qemu-img < `qemu-img map --output=json` output
Prints one extent per line: START LENGTH DESCRIPTION.
"""
import json
import sys


def merged(extents):
    out = []
    for start, length, desc in extents:
        if out and out[-1][2] == desc and out[-1][0] + out[-1][1] == start:
            out[-1][1] += length
        else:
            out.append([start, length, desc])
    return out


def main():
    kind = sys.argv[1]
    text = sys.stdin.read()
    extents = []
    if kind == "nbdinfo":
        for line in text.splitlines():
            fields = line.split(None, 3)
            if len(fields) < 3:
                continue
            extents.append((int(fields[0]), int(fields[1]), " ".join(fields[2:])))
    elif kind == "qemu-img":
        for e in json.loads(text):
            # The host offset never travels over NBD; everything else must match.
            desc = " ".join(f"{k}={e[k]}" for k in sorted(e) if k not in ("start", "length", "offset"))
            extents.append((e["start"], e["length"], desc))
    else:
        sys.exit(f"unknown map kind {kind}")
    for start, length, desc in merged(extents):
        print(start, length, desc)


main()
