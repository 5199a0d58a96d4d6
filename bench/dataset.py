"""The reference dataset: one service's data, deterministic, at any scale.

At scale 1.0 (about 1.1 GiB): a SQL-dump-like text file (~45 %), 20 000 small JSON and text
files in nested directories (~20 %), incompressible blobs (~35 %). ``mutate`` changes 1 %
of the files and appends to the dump, like a day of use.

    python -m bench.dataset make DIR [--scale 1.0] [--seed 1]
    python -m bench.dataset mutate DIR [--seed 2]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

GIB = 1 << 30
TOTAL = 1.1 * GIB
DUMP_SHARE, SMALL_SHARE, BLOB_SHARE = 0.45, 0.20, 0.35
SMALL_FILES = 20_000
BLOB_SIZE = 4 << 20
WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
    "backup",
    "restore",
    "archive",
    "snapshot",
    "service",
    "database",
    "customer",
    "invoice",
    "order",
]


def _sql_lines(rng: random.Random, count: int) -> list[str]:
    lines = []
    for i in range(count):
        words = " ".join(rng.choices(WORDS, k=rng.randint(4, 14)))
        lines.append(
            f"INSERT INTO orders VALUES ({i}, '{words}', {rng.random():.6f}, "
            f"'2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}', "
            f"{rng.randint(1, 99999)});\n"
        )
    return lines


def _write_dump(path: Path, rng: random.Random, size: int, append: bool = False) -> None:
    pool = _sql_lines(rng, 20_000)
    written = 0
    with open(path, "a" if append else "w") as handle:
        while written < size:
            chunk = "".join(rng.choices(pool, k=5_000))
            handle.write(chunk)
            written += len(chunk)


def _small_file(rng: random.Random, index: int, target: int) -> str:
    if index % 2:
        record = {
            "id": index,
            "name": " ".join(rng.choices(WORDS, k=3)),
            "tags": rng.choices(WORDS, k=5),
            "score": rng.random(),
            "notes": " ".join(rng.choices(WORDS, k=max(1, target // 7))),
        }
        return json.dumps(record, indent=1)
    return "\n".join(" ".join(rng.choices(WORDS, k=12)) for _ in range(max(1, target // 80)))


def small_path(root: Path, index: int) -> Path:
    return root / "files" / f"d{index % 40:02d}" / f"e{index % 13:02d}" / f"item-{index:06d}.txt"


def make(root: Path, scale: float = 1.0, seed: int = 1) -> dict:
    """Write the dataset below ``root`` (which must not exist). Returns its description."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    total = TOTAL * scale
    _write_dump(root / "dump.sql", rng, int(total * DUMP_SHARE))
    count = int(SMALL_FILES * scale)
    mean = int(total * SMALL_SHARE / count)
    for index in range(count):
        path = small_path(root, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_small_file(rng, index, rng.randint(mean // 2, mean * 3 // 2)))
    blobs = max(1, int(total * BLOB_SHARE / BLOB_SIZE))
    (root / "blobs").mkdir()
    for index in range(blobs):
        (root / "blobs" / f"blob-{index:04d}.bin").write_bytes(rng.randbytes(BLOB_SIZE))
    info = {
        "scale": scale,
        "seed": seed,
        "small_files": count,
        "blobs": blobs,
        "bytes": sum(p.stat().st_size for p in root.rglob("*") if p.is_file()),
    }
    (root.parent / f"{root.name}.json").write_text(json.dumps(info))
    return info


def mutate(root: Path, seed: int = 2) -> dict:
    """Change 1 % of the files (rewritten small files and blobs) and append to the dump."""
    rng = random.Random(seed)
    info = json.loads((root.parent / f"{root.name}.json").read_text())
    changed = 0
    for index in rng.sample(range(info["small_files"]), max(1, info["small_files"] // 100)):
        path = small_path(root, index)
        path.write_text(_small_file(rng, index, path.stat().st_size))
        changed += 1
    for index in rng.sample(range(info["blobs"]), max(1, info["blobs"] // 100)):
        (root / "blobs" / f"blob-{index:04d}.bin").write_bytes(rng.randbytes(BLOB_SIZE))
        changed += 1
    dump = root / "dump.sql"
    _write_dump(dump, rng, dump.stat().st_size // 100, append=True)
    return {"changed_files": changed, "dump_appended": True}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make")
    p.add_argument("dir", type=Path)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1)
    p = sub.add_parser("mutate")
    p.add_argument("dir", type=Path)
    p.add_argument("--seed", type=int, default=2)
    args = parser.parse_args(argv)
    if args.command == "make":
        print(json.dumps(make(args.dir, args.scale, args.seed)))
    else:
        print(json.dumps(mutate(args.dir, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
