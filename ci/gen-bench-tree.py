#!/usr/bin/env python3
"""Writes the deterministic benchmark tree for ci/bench.

Usage: gen-bench-tree.py DIR [SCALE]

About 1 GiB in about 70k files at SCALE 1.0: compressible text-like files, incompressible
random files, and a few large files of each kind, in a two-level folder fan-out. The same
SCALE always gives the same bytes, names and modes (Python's seeded Mersenne Twister).
"""

import os
import random
import sys

WORDS = (
    "kiln oven bake layer digest tar gzip zstd image index manifest config store blob "
    "recipe lock epoch tree file symlink hardlink mode owner group path name build cache "
    "the a of to and in is for on with as by at from this that be are it or an not"
).split()


def text_pool(rng, size):
    """Log- and source-like lines: compressible, but not trivially."""
    out = []
    n = 0
    line = 0
    while n < size:
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14)))
        s = f"{line:08d} [{rng.choice(('INFO', 'WARN', 'DEBUG'))}] {words} id={rng.getrandbits(32):08x}\n"
        out.append(s)
        n += len(s)
        line += 1
    return "".join(out).encode()[:size]


def main():
    root = sys.argv[1]
    scale = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    rng = random.Random(20261126)
    text = text_pool(rng, 16 << 20)
    noise = rng.randbytes(32 << 20)

    n_text = int(64_000 * scale)
    n_bin = int(5_500 * scale)
    n_large = max(1, int(4 * scale))
    total = 0
    count = 0

    def write(rel, data, exe=False):
        nonlocal total, count
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o755 if exe else 0o644)
        total += len(data)
        count += 1

    def pick(pool, size):
        start = rng.randrange(0, len(pool) - size)
        return pool[start : start + size]

    for i in range(n_text):
        size = min(int(rng.lognormvariate(8.3, 1.0)), 256 << 10)
        write(f"text/d{i % 256:03d}/s{(i // 256) % 16:02d}/f{i:06d}.txt", pick(text, size), i % 50 == 0)
    for i in range(n_bin):
        size = min(int(rng.lognormvariate(10.0, 1.0)), 2 << 20)
        write(f"bin/d{i % 64:02d}/b{i:05d}.bin", pick(noise, size))
    for i in range(n_large):
        # Large files are stitched from pool slices so they are not one repeated block.
        parts = [pick(text, 4 << 20) for _ in range(14)]
        write(f"large/log{i}.txt", b"".join(parts))
        parts = [pick(noise, 4 << 20) for _ in range(10)]
        write(f"large/blob{i}.bin", b"".join(parts))
    for i in range(32):
        os.makedirs(os.path.join(root, f"empty/e{i:02d}"), exist_ok=True)
        os.symlink(f"../text/d{i:03d}", os.path.join(root, f"empty/link{i:02d}"))

    print(f"{count} files, {total / (1 << 20):.0f} MiB", file=sys.stderr)


if __name__ == "__main__":
    main()
