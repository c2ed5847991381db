#!/usr/bin/env python3
"""Which of the allocator's instructions did an interrupt land on?

usage: pcfilter.py ELF LOG PATTERN [OBJDUMP] [--per-function]

LOG holds the image's `pchits ADDR BITS` lines (bit i of BITS: the halfword at
ADDR + 2*i was the interrupted PC of some handler entry). PATTERN is a regular
expression over demangled function names (the allocator's functions, e.g.
`sigalloc::|__rust_(alloc|dealloc|realloc)|__rg_`). Prints one line:
`pc coverage: H of N instructions in M functions interrupted (P%)`.
"""
import re
import subprocess
import sys


def main():
    elf, log, pattern = sys.argv[1], sys.argv[2], re.compile(sys.argv[3])
    per_function = "--per-function" in sys.argv
    args = [a for a in sys.argv if a != "--per-function"]
    objdump = args[4] if len(args) > 4 else "llvm-objdump"
    hits = set()
    for line in open(log, errors="replace"):
        m = re.match(r"pchits ([0-9a-f]{8}) ([0-9a-f]{8})", line)
        if m:
            base, bits = int(m.group(1), 16), int(m.group(2), 16)
            for i in range(32):
                if bits >> i & 1:
                    hits.add(base + 2 * i)
    out = subprocess.run([objdump, "-d", "--demangle", "--no-show-raw-insn", elf],
                         check=True, capture_output=True, text=True).stdout
    funcs, insns, hit, inside, fn = {}, 0, 0, False, None
    for line in out.splitlines():
        m = re.match(r"^([0-9a-f]+) <(.*)>:$", line)
        if m:
            fn = re.sub(r"::h[0-9a-f]{16}$", "", m.group(2))
            inside = bool(pattern.search(fn))
            if inside:
                funcs.setdefault(fn, [0, 0])
            continue
        m = re.match(r"^\s*([0-9a-f]+):\s+\S", line)
        if inside and m:
            h = int(m.group(1), 16) in hits
            insns += 1
            hit += h
            funcs[fn][0] += h
            funcs[fn][1] += 1
    if insns == 0:
        print("pc coverage: no allocator instructions found")
        sys.exit(1)
    if per_function:
        for name, (h, n) in sorted(funcs.items(), key=lambda kv: -kv[1][1]):
            print(f"    {h:5} of {n:5} ({100.0 * h / n:5.1f}%)  {name}")
    print(f"pc coverage: {hit} of {insns} instructions in {len(funcs)} allocator functions "
          f"interrupted ({100.0 * hit / insns:.1f}%)")


main()
