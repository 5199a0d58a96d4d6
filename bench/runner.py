"""The command runner's own cost: output read in 4 KiB chunks and cut into bounded lines.

Every command pullback runs (restic, borg, ssh, database tools) has its output read by
:class:`pullback.common.runner.Runner`, which takes 4 KiB chunks and cuts them into lines of
at most ``MAX_LINE`` characters (so a tool, or a client through ssh, writing without
newlines costs that much memory, not all it wrote). This compares, in the same run:

- ``lines``: ``seq 1 N`` through the Runner (each line masked, kept in the tail, logged at
  DEBUG with logging switched off) against ``subprocess`` reading the same lines;
- ``no newline``: ``head -c SIZE /dev/zero`` through the Runner against ``cat > /dev/null``,
  with the Runner's peak RSS growth.

Usage: python -m bench.runner [--lines 2000000] [--mib 512] [--repeat 3]
"""

from __future__ import annotations

import argparse
import logging
import resource
import statistics
import subprocess
import time

from pullback.common.runner import Runner


def _runner(argv: list[str]) -> float:
    started = time.monotonic()
    Runner().run(argv, level=logging.DEBUG)
    return time.monotonic() - started


def _by_hand(argv: list[str]) -> float:
    started = time.monotonic()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for _line in proc.stdout:
            pass
    return time.monotonic() - started


def _median(repeat: int, fn, argv: list[str]) -> float:
    return statistics.median(fn(argv) for _ in range(repeat))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=2_000_000)
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)

    seq = ["seq", "1", str(args.lines)]
    ours, hand = _median(args.repeat, _runner, seq), _median(args.repeat, _by_hand, seq)
    print(
        f"lines      {args.lines} lines: runner {ours:.2f} s, by hand {hand:.2f} s, "
        f"ratio {ours / hand:.2f}"
    )

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    zeros = ["head", "-c", str(args.mib << 20), "/dev/zero"]
    ours = _median(args.repeat, _runner, zeros)
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    started = time.monotonic()
    subprocess.run(zeros, stdout=subprocess.DEVNULL, check=True)
    hand = time.monotonic() - started
    print(
        f"no newline {args.mib} MiB: runner {ours:.2f} s ({args.mib / ours:.0f} MiB/s), "
        f"to /dev/null {hand:.2f} s, peak RSS grew {grew:.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
