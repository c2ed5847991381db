#!/usr/bin/env python3
"""Interrupt-masking windows in an ARM image.

usage: masked.py ELF [OBJDUMP]

Finds every `cpsid i` and counts the instructions from it to the first restore after it
in address order (`msr primask` or `cpsie i`), following a forward branch inside the
window to its target if that is where the code goes. Prints one line:
`masking: N windows, longest K instructions (in FUNCTION)`, or `masking: none`.
"""
import re
import subprocess
import sys

elf = sys.argv[1]
objdump = sys.argv[2] if len(sys.argv) > 2 else "llvm-objdump"
out = subprocess.run([objdump, "-d", "--no-show-raw-insn", elf], check=True, capture_output=True, text=True).stdout
insns, fn = [], None
for line in out.splitlines():
    m = re.match(r"^([0-9a-f]+) <(.*)>:$", line)
    if m:
        fn = m.group(2)
        continue
    m = re.match(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$", line)
    if m:
        insns.append((int(m.group(1), 16), m.group(2).lower(), m.group(3).lower(), fn))
index = {a: i for i, (a, _, _, _) in enumerate(insns)}


def window(i, depth=0):
    """Instructions from insns[i] (inside a window) to the restore, worst path."""
    n = 0
    while i < len(insns) and n < 200:
        addr, op, args, _ = insns[i]
        n += 1
        if (op == "msr" and "primask" in args) or op == "cpsie":
            return n
        m = re.match(r"0x([0-9a-f]+)", args)
        if op.startswith("b") and m and depth < 4:
            target = int(m.group(1), 16)
            if target > addr and target in index:
                taken = window(index[target], depth + 1)
                if op in ("b", "b.w", "b.n"):
                    return n + taken
                rest = window(i + 1, depth + 1)
                return n + max(taken, rest)
        i += 1
    return n


def readable(name):
    """Legacy Rust mangling (`_ZN` len-prefixed parts `E`) to `a::b`, hash dropped."""
    if not (name and name.startswith("_ZN") and name.endswith("E")):
        return name
    body, parts = name[3:-1], []
    while body and body[0].isdigit():
        n = int(re.match(r"\d+", body).group(0))
        body = body[len(str(n)):]
        parts.append(body[:n])
        body = body[n:]
    if parts and re.fullmatch(r"h[0-9a-f]{16}", parts[-1]):
        parts.pop()
    out = "::".join(parts)
    for k, v in (("$LT$", "<"), ("$GT$", ">"), ("$u20$", " "), ("$RF$", "&"), ("$C$", ","), ("..", "::")):
        out = out.replace(k, v)
    return out


spans = [(window(i + 1) + 1, insns[i][3]) for i, (_, op, args, _) in enumerate(insns) if op == "cpsid"]
if not spans:
    print("masking: none")
else:
    worst = max(spans)
    print(f"masking: {len(spans)} windows, longest {worst[0]} instructions (in {readable(worst[1])})")
