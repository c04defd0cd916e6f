#!/usr/bin/env python3
"""Extract the uncompressed ELF vmlinux from a bzImage.

Booting the ELF through PVH skips the in-guest decompression, which costs
seconds under TCG. Same idea as the kernel's scripts/extract-vmlinux: find a
compressed stream by its magic, decompress, keep the first result that is ELF.
"""
import lzma
import sys
import zlib

MAGICS = [
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x1f\x8b\x08", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
]


def decompress(kind, data):
    if kind == "xz":
        return lzma.LZMADecompressor().decompress(data)
    if kind == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
    if kind == "zstd":
        import zstandard  # only when the kernel uses zstd

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    raise ValueError(kind)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    blob = open(src, "rb").read()
    for magic, kind in MAGICS:
        start = 0
        while True:
            pos = blob.find(magic, start)
            if pos < 0:
                break
            start = pos + 1
            try:
                out = decompress(kind, blob[pos:])
            except Exception:
                continue
            if out[:4] == b"\x7fELF":
                open(dst, "wb").write(out)
                return 0
    print(f"no ELF vmlinux found in {src}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
