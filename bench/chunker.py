"""The chunker's throughput: content-defined chunks against sha256 alone, on the same data.

:class:`pullback.common.archive.chunker.Chunker` splits large files into chunks (and hashes
every chunk) while the client reads them. This compares, fed in 1 MiB pieces as a file
read would be, in the same run:

- ``sha256``: hashlib over the data in the same pieces (the floor: every byte is hashed);
- ``chunker``: ``Chunker(keep_data=False)`` (chunk lengths and ids only);
- ``chunker+data``: ``Chunker(keep_data=True)`` (each chunk's bytes too, as a delta needs);

on dump-like text (seeded SQL ``INSERT`` lines of ~100 bytes), random binary and zeros,
with the average chunk size.

Usage: python -m bench.chunker [--size-mib 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time
from collections.abc import Callable

from pullback.common.archive.chunker import Chunker

PIECE = 1 << 20
STATUSES = ("new", "paid", "shipped", "delivered", "returned")


def dump_text(size: int, seed: int = 1) -> bytes:
    """``size`` bytes of SQL-dump-like text (lines of ~100 bytes), the same for a seed."""
    rnd = random.Random(seed)
    lines = []
    total = 0
    row = 0
    while total < size:
        row += 1
        line = (
            f"INSERT INTO public.orders VALUES ({row}, 'customer_{rnd.randrange(100000)}', "
            f"{rnd.randrange(1, 50)}, {rnd.randrange(100000) / 100}, "
            f"'2026-11-{rnd.randrange(1, 29):02d} {rnd.randrange(24):02d}:"
            f"{rnd.randrange(60):02d}:{rnd.randrange(60):02d}', "
            f"'{rnd.choice(STATUSES)}');\n"
        ).encode()
        lines.append(line)
        total += len(line)
    return b"".join(lines)[:size]


def _pieces(data: bytes) -> list[bytes]:
    """``data`` in pieces of :data:`PIECE` bytes, as file reads give them."""
    return [data[at : at + PIECE] for at in range(0, len(data), PIECE)]


def _random(size: int, seed: int = 2) -> list[bytes]:
    rnd = random.Random(seed)
    return [rnd.randbytes(min(PIECE, size - at)) for at in range(0, size, PIECE)]


def _sha256(pieces: list[bytes]) -> int:
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece)
    digest.digest()
    return 1


def _chunker(keep_data: bool) -> Callable[[list[bytes]], int]:
    def run(pieces: list[bytes]) -> int:
        chunker = Chunker(keep_data=keep_data)
        count = 0
        for piece in pieces:
            count += len(chunker.feed(piece))
        return count + len(chunker.finish())

    return run


def _time(repeat: int, fn: Callable, pieces: list) -> tuple[float, int]:
    """The shortest time of ``fn(pieces)`` over ``repeat`` runs (the least disturbed by
    whatever else the machine runs), and what it returned."""
    times = []
    result = 0
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn(pieces)
        times.append(time.perf_counter() - started)
    return min(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    size = args.size_mib << 20
    makers = {
        "dump text": lambda: _pieces(dump_text(size)),
        "random": lambda: _random(size),
        "zeros": lambda: [bytes(min(PIECE, size - at)) for at in range(0, size, PIECE)],
    }
    print(f"{args.size_mib} MiB fed in {PIECE >> 20} MiB pieces, MB/s (best of {args.repeat})")
    print(f"{'data':<10} {'sha256':>8} {'chunker':>8} {'+data':>8}  average chunk")
    for name, make in makers.items():
        pieces = make()
        rates = []
        chunks = 0
        for fn in (_sha256, _chunker(False), _chunker(True)):
            seconds, chunks = _time(args.repeat, fn, pieces)
            rates.append(size / seconds / 1e6)
        print(
            f"{name:<10} {rates[0]:8.0f} {rates[1]:8.0f} {rates[2]:8.0f}  "
            f"{size / chunks / 1024:.1f} KiB ({chunks} chunks)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
