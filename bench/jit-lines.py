#!/usr/bin/env python3
"""Where a loaded BPF program spends its time, by source line.

Samples every CPU with `perf record` while the program runs (for the
datapath: `palisade-bench --loop CASE SECONDS` in another shell), then maps
each sample that fell in the program's JIT image to the source line of the
instruction it fell in, through the program's line info (`jited_line_info`:
the image address where each line's code starts). Debian's `bpftool` cannot
disassemble JIT images (no libbfd), so it cannot do this itself.

    bench/jit-lines.py pal_tc_from_pod|PROGRAM_ID [--seconds 5] [--top 40]

Needs root, `perf` (Debian: linux-perf) and `bpftool` (Debian: bpftool).
Sampling skids: a sample lands on the instruction after a slow one, so a
line's share is approximate, and the program's entry takes the samples of
the call into it.
"""

import argparse
import bisect
import collections
import ctypes
import json
import os
import re
import struct
import subprocess
import sys
import tempfile

SYS_BPF = 321  # x86_64
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
# `struct bpf_prog_info`: the offsets of the fields read or set here.
INFO_SIZE = 232
JITED_PROG_LEN = 16
NR_JITED_KSYMS, JITED_KSYMS = 104, 112
NR_LINE_INFO, LINE_INFO = 148, 152
JITED_LINE_INFO, NR_JITED_LINE_INFO = 160, 168
LINE_INFO_REC_SIZE, JITED_LINE_INFO_REC_SIZE = 172, 176
LINE_REC = 16  # `struct bpf_line_info`: insn_off, file_name_off, line_off, line_col

libc = ctypes.CDLL(None, use_errno=True)


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, len(attr))
    fd = libc.syscall(SYS_BPF, cmd, buf, len(attr))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf({cmd}): {os.strerror(err)}")
    return fd


def prog_info(fd, layout):
    info = ctypes.create_string_buffer(bytes(layout), INFO_SIZE)
    bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", fd, INFO_SIZE, ctypes.addressof(info)))
    return info.raw


def line_starts(prog_id):
    """The image's (start, end) and, sorted, (address where a line's code
    starts, instruction offset)."""
    fd = bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("<III", prog_id, 0, 0))
    try:
        counts = prog_info(fd, bytearray(INFO_SIZE))
        (image_len,) = struct.unpack_from("<I", counts, JITED_PROG_LEN)
        (nr_ksyms,) = struct.unpack_from("<I", counts, NR_JITED_KSYMS)
        (nr_lines,) = struct.unpack_from("<I", counts, NR_LINE_INFO)
        (nr_jited,) = struct.unpack_from("<I", counts, NR_JITED_LINE_INFO)
        if nr_lines == 0 or nr_jited != nr_lines:
            sys.exit(f"program {prog_id} has no line info (loaded without BTF?)")
        ksyms = ctypes.create_string_buffer(8 * nr_ksyms)
        lines = ctypes.create_string_buffer(LINE_REC * nr_lines)
        jited = ctypes.create_string_buffer(8 * nr_jited)
        ask = bytearray(INFO_SIZE)
        struct.pack_into("<I", ask, NR_JITED_KSYMS, nr_ksyms)
        struct.pack_into("<Q", ask, JITED_KSYMS, ctypes.addressof(ksyms))
        struct.pack_into("<I", ask, NR_LINE_INFO, nr_lines)
        struct.pack_into("<Q", ask, LINE_INFO, ctypes.addressof(lines))
        struct.pack_into("<Q", ask, JITED_LINE_INFO, ctypes.addressof(jited))
        struct.pack_into("<I", ask, NR_JITED_LINE_INFO, nr_jited)
        struct.pack_into("<I", ask, LINE_INFO_REC_SIZE, LINE_REC)
        struct.pack_into("<I", ask, JITED_LINE_INFO_REC_SIZE, 8)
        prog_info(fd, ask)
    finally:
        os.close(fd)
    insns = [struct.unpack_from("<I", lines.raw, i * LINE_REC)[0] for i in range(nr_lines)]
    addrs = struct.unpack(f"<{nr_jited}Q", jited.raw)
    (start,) = struct.unpack_from("<Q", ksyms.raw, 0)
    if start == 0 or not any(addrs):
        sys.exit("the kernel hides program addresses (kernel.kptr_restrict): run as root, "
                 "with kptr_restrict at 0 or 1")
    if nr_ksyms > 1:
        print(f"the program has {nr_ksyms - 1} subprograms: their samples are left out",
              file=sys.stderr)
    return (start, start + image_len), sorted(zip(addrs, insns))


def source_of_insns(prog_id):
    """Instruction offset -> the source line `bpftool` prints above it."""
    text = subprocess.run(
        ["bpftool", "prog", "dump", "xlated", "id", str(prog_id), "linum"],
        check=True, capture_output=True, text=True,
    ).stdout
    source, line = {}, None
    for row in text.splitlines():
        if row.startswith(";"):
            line = row[1:].strip()
        elif (m := re.match(r"\s*(\d+):", row)) and line is not None:
            source[int(m.group(1))] = line
    return source


def program_id(name_or_id):
    """An id as given, or the newest loaded program of that name (saying
    so where there are others: a daemon's, a lab's)."""
    if name_or_id.isdigit():
        return int(name_or_id)
    progs = json.loads(subprocess.run(
        ["bpftool", "prog", "show", "--json"], check=True, capture_output=True, text=True,
    ).stdout)
    # The kernel keeps 15 characters of a program's name.
    ids = sorted(p["id"] for p in progs if p.get("name") == name_or_id[:15])
    if not ids:
        sys.exit(f"no loaded program named {name_or_id}")
    if len(ids) > 1:
        print(f"{len(ids)} programs named {name_or_id} (ids {ids}): the newest taken; "
              "give the id (`palisade-bench --loop` prints it) to choose", file=sys.stderr)
    return ids[-1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("program", help="the program's id, or its name (the newest of that name)")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    prog_id = program_id(args.program)
    (image_start, image_end), starts = line_starts(prog_id)
    addrs = [a for a, _ in starts]
    source = source_of_insns(prog_id)
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        subprocess.run(
            ["perf", "record", "-a", "-q", "-o", data, "--", "sleep", str(args.seconds)],
            check=True,
        )
        samples = subprocess.run(
            ["perf", "script", "-i", data, "-F", "ip,sym"],
            check=True, capture_output=True, text=True,
        ).stdout
    by_line, total, all_samples = collections.Counter(), 0, 0
    for row in samples.splitlines():
        fields = row.split()
        if not fields:
            continue
        all_samples += 1
        ip = int(fields[0], 16)
        # This program's image only: another program of the same name (a
        # daemon's, a bench's) has an image of its own.
        if not image_start <= ip < image_end:
            continue
        at = bisect.bisect_right(addrs, ip) - 1
        if at < 0:
            continue
        total += 1
        by_line[source.get(starts[at][1], f"instruction {starts[at][1]}")] += 1
    if total == 0:
        sys.exit(f"no samples in program {prog_id}: is it running?")
    print(f"program {prog_id}: {total} of {all_samples} samples on every CPU")
    for line, n in by_line.most_common(args.top):
        print(f"{100 * n / total:5.1f} %  {line}")


if __name__ == "__main__":
    main()
