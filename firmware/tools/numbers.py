#!/usr/bin/env python3
"""The firmware numbers: code size, stack, instructions, masked window, per allocator.

usage: numbers.py LLVM_BIN RELEASE_DIR LOG_DIR [NIGHTLY_RELEASE_DIR]

RELEASE_DIR holds the thumbv7em images (`lean`, `storm`, `llff`, `tlsf`, `bump`), LOG_DIR
their QEMU logs (`<image>.log`, as `.ci/firmware.sh` writes them). Sizes and frames of
sigalloc come from `lean` (the harness without stats/validate/claim), its run-time
numbers from `storm`. NIGHTLY_RELEASE_DIR,
if given, holds the same images built with `-Z emit-stack-sizes` (largest frames).
Prints a Markdown table and the details behind it.
"""
import os
import re
import subprocess
import sys

LLVM, REL, LOGS = sys.argv[1], sys.argv[2], sys.argv[3]
NIGHTLY = sys.argv[4] if len(sys.argv) > 4 else None

WRAPPERS = r"(^|::)(__rust_(alloc|dealloc|realloc|alloc_zeroed)|__rg_\w+)$"
ALLOCATORS = {
    "sigalloc": r"^(<)?sigalloc::",
    "llff": r"^(<)?(embedded_alloc::|linked_list_allocator::)|critical_section|^_critical_section",
    "tlsf": r"^(<)?(embedded_alloc::|rlsf::)|critical_section|^_critical_section",
}
NAMES = {"sigalloc": "sigalloc", "llff": "embedded-alloc LLFF", "tlsf": "embedded-alloc TLSF"}


def run(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def sections(elf):
    out = {}
    for line in run(f"{LLVM}/llvm-size", "-A", elf).splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def symbols(elf, demangle=True):
    """(address, size, type, name) of every sized symbol."""
    args = [f"{LLVM}/llvm-nm", "-S", elf] + (["-C"] if demangle else [])
    out = []
    for line in run(*args).splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and len(parts[1]) == 8:
            out.append((int(parts[0], 16), int(parts[1], 16), parts[2], parts[3]))
    return out


def strip_hash(name):
    """Drops the hash and finishes what llvm-nm -C leaves of legacy mangling."""
    name = re.sub(r"::h[0-9a-f]{16}$", "", name)
    for k, v in (("$LT$", "<"), ("$GT$", ">"), ("$u20$", " "), ("$RF$", "&"), ("$C$", ","), ("..", "::")):
        name = name.replace(k, v)
    return name[1:] if name.startswith("_<") else name


def allocator_code(alloc, img):
    pat, wrap = re.compile(ALLOCATORS[alloc]), re.compile(WRAPPERS)
    syms = [(s, strip_hash(n)) for _, s, t, n in symbols(os.path.join(REL, img)) if t in "tT"]
    mine = [(s, n) for s, n in syms if pat.search(n) or wrap.search(n)]
    return sum(s for s, _ in mine), sorted(mine, reverse=True)


def frames(alloc, img):
    """Largest prologue frames of the allocator's functions (nightly build)."""
    if not NIGHTLY:
        return []
    elf = os.path.join(NIGHTLY, img)
    mangled = {a: n for a, _, _, n in symbols(elf, demangle=False)}
    demangled = {a: strip_hash(n) for a, _, _, n in symbols(elf)}
    by_name = {m: demangled.get(a, m) for a, m in mangled.items()}
    pat, wrap = re.compile(ALLOCATORS[alloc]), re.compile(WRAPPERS)
    out, fn = [], None
    for line in run(f"{LLVM}/llvm-readobj", "--stack-sizes", elf).splitlines():
        m = re.search(r"Functions: \[(.*)\]", line)
        if m:
            fn = by_name.get(m.group(1).split(",")[0].strip(), m.group(1))
        m = re.search(r"Size: (0x[0-9A-Fa-f]+)", line)
        if m and fn and (pat.search(fn) or wrap.search(fn)):
            out.append((int(m.group(1), 16), fn))
    return sorted(out, reverse=True)


def log_value(img, regex, group=1):
    try:
        text = open(os.path.join(LOGS, f"{img}.log"), errors="replace").read()
    except OSError:
        return None
    m = re.search(regex, text, re.M)
    return m.group(group) if m else None


def masking(img):
    out = run(f"{LLVM}/llvm-objdump", "-d", os.path.join(REL, img))
    return len(re.findall(r"\s(cpsid|msr\s+(primask|basepri|basepri_max|faultmask)\b)", out, re.I))


def short(name):
    name = re.sub(r"^<(.*) as .*>::", r"\1::", name)
    return name.split("::")[-1] if "::" in name else name


base = sections(os.path.join(REL, "bump"))
base_code = base.get(".text", 0) + base.get(".rodata", 0)
rows, details = [], []
SIZE_IMAGE = {"sigalloc": "lean", "llff": "llff", "tlsf": "tlsf"}
RUN_IMAGE = {"sigalloc": "storm", "llff": "llff", "tlsf": "tlsf"}
for alloc in ["sigalloc", "llff", "tlsf"]:
    sec = sections(os.path.join(REL, SIZE_IMAGE[alloc]))
    code = sec.get(".text", 0) + sec.get(".rodata", 0)
    total, mine = allocator_code(alloc, SIZE_IMAGE[alloc])
    fr = frames(alloc, SIZE_IMAGE[alloc])
    img = RUN_IMAGE[alloc]
    pair = {s: log_value(img, rf"bench pair {s} B: (\d+) insns") for s in (16, 128, 1024, 4000)}
    mixed = log_value(img, r"bench mixed: (\d+) insns")
    longest = log_value(img, r"longest single call <= (\d+) insns")
    hw = log_value(img, r"stack high-water (\d+) bytes")
    if alloc == "sigalloc":
        lean_hw = log_value("lean", r"stack high-water (\d+) bytes")
        hw = f"{lean_hw} B ({hw} B with NMI allocating too)"
    else:
        hw = f"{hw} B"
    lat = log_value(img, r"systick latency max \d+ ticks \(<= (\d+) insns")
    masks = masking(img)
    nmi = log_value(f"{img}_nmi", r"^firmware: PANIC .*\n(.*)$") if alloc != "sigalloc" else None
    if alloc == "sigalloc":
        window = "0 (no masking instruction in the image)" if masks == 0 else f"{masks} masking instructions!"
        nmi_cell = "yes: NMI allocates and frees in the storm"
    else:
        window = f"the whole call: up to {longest} insns (bench), {masks} masking instructions"
        nmi_cell = f"no: {nmi.strip() if nmi else 'see log'} (panic in NMI)"
    top_frames = ", ".join(f"`{short(n)}` {s}" for s, n in fr[:4]) or "n/a (no nightly build)"
    rows.append(
        f"| {NAMES[alloc]} | {code - base_code:,} B ({total:,} B in its symbols) | {top_frames} | "
        f"{hw} | {pair[16]} / {pair[128]} / {pair[1024]} / {pair[4000]} | {mixed} | {window} | "
        f"{lat} insns | {nmi_cell} |"
    )
    details.append(f"{NAMES[alloc]}: allocator symbols (bytes), {SIZE_IMAGE[alloc]} image:")
    details.extend(f"    {s:6} {n}" for s, n in mine[:12])
    if fr:
        details.append(f"{NAMES[alloc]}: largest frames (bytes): " + ", ".join(f"{n} {s}" for s, n in fr[:8]))

print("| allocator | flash vs a bump allocator (.text+.rodata) | largest frames (B) | stack high-water, storm | "
      "insns per malloc+free, 16 B / 128 B / 1 KiB / 4000 B | mixed, 64 live | longest interrupts-masked window | "
      "worst SysTick latency | survives NMI allocating |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print(r)
print()
for d in details:
    print(d)
