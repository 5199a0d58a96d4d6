"""The second copy (issue 20, docs/disaster-recovery.md): the time and bytes of a daily
``pullback-server copy`` after the first, against ``rsync`` of the repository directory.

    python -m bench.copy [--scale 0.25] [--repeat 1] [--work DIR] [--no-save]

One client, a server config with a local primary ``repository_root`` and ``copy:
{repository_root: WORK/copy-N}``. Per repetition, from fresh repositories:

  day one    pack, ``pullback-server pull``; then ``pullback-server copy --no-verify``
             (makes the copy, copies the snapshot) and ``rsync -a --delete --stats`` of the
             primary host repository into a mirror directory (order alternates)
  next day   ``mutate``, pack, pull; the same copy and rsync again
  no-op      both once more with nothing new

Bytes: the copy repository's growth on disk (``du -sb`` before/after; restic copy writes
only the blobs the copy lacks, re-encrypted with the copy's key), rsync's "Total bytes
sent" and "Literal data", and the primary's growth for reference. For where the copy's
time goes, the same steps by hand are timed as well: ``restic copy`` into a repository of
its own (one process, both repositories opened once) and ``restic cat config`` (a
restic start plus the key's scrypt derivation), and each restic call of the copy is timed
by a logging ``restic`` first in its PATH. Writes bench/results/copy-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import yaml

from bench import dataset
from bench.remote import _cpu
from bench.run import HERE, Bench

HOST = "bench"
SHIM = """#!/bin/sh
read started _ < /proc/uptime
{restic} "$@"
code=$?
read ended _ < /proc/uptime
echo "$started $ended $1" >> "$PULLBACK_BENCH_RESTIC_LOG"
exit $code
"""
"""A ``restic`` first in the copy's PATH that logs each call's start, end and command
(about 5 ms a call), so that the copy's time can be split by restic command. Boot-time
clock (10 ms steps): timed by the wall clock, one call once took an impossible 28 s."""


def du(path: Path) -> int:
    """Apparent bytes below ``path`` (0 when it does not exist)."""
    if not path.exists():
        return 0
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def _stat(text: str, label: str) -> int:
    match = re.search(rf"^{re.escape(label)}:\s*([\d,]+)", text, re.M)
    return int(match.group(1).replace(",", "")) if match else -1


class CopyBench(Bench):
    def config(self, n: int) -> Path:
        """A fresh server config: primary below repos-N, copies below copy-N."""
        for name in (f"state-{n}", f"repos-{n}", f"copy-{n}", f"mirror-{n}", f"hand-copy-{n}"):
            shutil.rmtree(self.work / name, ignore_errors=True)
        path = self.server_config(self.work / f"state-{n}", self.work / f"repos-{n}")
        data = yaml.safe_load(path.read_text())
        data["copy"] = {"repository_root": str(self.work / f"copy-{n}")}
        path.write_text(yaml.safe_dump(data))
        return path

    def shim(self) -> dict[str, str]:
        """The copy's environment: the logging ``restic`` first in PATH."""
        directory = self.work / "shim"
        directory.mkdir(exist_ok=True)
        (directory / "restic").write_text(SHIM.format(restic=shutil.which("restic")))
        (directory / "restic").chmod(0o755)
        log = directory / "log"
        log.unlink(missing_ok=True)
        return {
            **os.environ,
            "PATH": f"{directory}:{os.environ['PATH']}",
            "PULLBACK_BENCH_RESTIC_LOG": str(log),
        }

    def phases(self, started: float, ended: float) -> list[list]:
        """The logged restic calls as [command, start, seconds], start relative to the
        copy's (boot-time clock), and ["other", -, the rest]."""
        log = self.work / "shim" / "log"
        calls = []
        for line in log.read_text().splitlines() if log.exists() else []:
            begin, end, command = line.split()
            calls.append(
                [command, round(float(begin) - started, 3), round(float(end) - float(begin), 3)]
            )
        calls.append(["other", None, round(ended - started - sum(c[2] for c in calls), 3)])
        return calls

    def cli(self, config: Path, *args: str) -> list[str]:
        return [self.py, "-m", "pullback.server.cli", "-q", "--config", str(config), *args]

    def pull(self, config: Path) -> float:
        self.offer_again()
        started = time.monotonic()
        subprocess.run(self.cli(config, "pull"), check=True)
        return time.monotonic() - started

    def copy(self, config: Path, n: int) -> dict:
        """``pullback-server copy --no-verify``: seconds, CPU seconds, copy growth."""
        repo = self.work / f"copy-{n}" / HOST
        before, env = du(repo), self.shim()
        cpu, started, wall = _cpu(), time.monotonic(), time.clock_gettime(time.CLOCK_BOOTTIME)
        subprocess.run(
            self.cli(config, "copy", "--no-verify"), env=env, check=True, stdout=subprocess.DEVNULL
        )
        seconds, ended = time.monotonic() - started, time.clock_gettime(time.CLOCK_BOOTTIME)
        return {
            "seconds": seconds,
            "cpu": _cpu() - cpu,
            "bytes": du(repo) - before,
            "phases": self.phases(wall, ended),
        }

    def rsync(self, n: int) -> dict:
        """``rsync -a --delete --stats`` of the primary host repository into the mirror."""
        source, mirror = self.work / f"repos-{n}" / HOST, self.work / f"mirror-{n}"
        before = du(mirror)
        cpu, started = _cpu(), time.monotonic()
        out = subprocess.run(
            ["rsync", "-a", "--delete", "--stats", f"{source}/", f"{mirror}/"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        seconds = time.monotonic() - started
        return {
            "seconds": seconds,
            "cpu": _cpu() - cpu,
            "bytes": _stat(out, "Total bytes sent"),
            "literal": _stat(out, "Literal data"),
            "files": _stat(out, "Number of regular files transferred"),
            "growth": du(mirror) - before,
        }

    def hand_copy(self, n: int) -> dict:
        """``restic copy`` by hand, into a repository of its own (same chunker params)."""
        source, target = self.work / f"repos-{n}" / HOST, self.work / f"hand-copy-{n}"
        from_repo = ["--from-repo", str(source), "--from-password-file", str(self.password_file)]
        if not target.exists():
            subprocess.run(
                ["restic", "-q", "-r", str(target), "init", "--copy-chunker-params", *from_repo],
                env=self.env,
                check=True,
                capture_output=True,
            )
        before = du(target)
        cpu, started = _cpu(), time.monotonic()
        subprocess.run(
            ["restic", "-q", "-r", str(target), "copy", *from_repo],
            env=self.env,
            check=True,
            capture_output=True,
        )
        seconds = time.monotonic() - started
        return {"seconds": seconds, "cpu": _cpu() - cpu, "bytes": du(target) - before}

    def probe(self, n: int) -> dict:
        """Fixed costs: a restic start with the key's derivation, and a pullback start."""
        repo = self.work / f"repos-{n}" / HOST
        started = time.monotonic()
        subprocess.run(
            ["restic", "-r", str(repo), "cat", "config", "--no-lock"],
            env=self.env,
            check=True,
            capture_output=True,
        )
        restic_open = time.monotonic() - started
        started = time.monotonic()
        subprocess.run(
            [self.py, "-m", "pullback.server.cli", "--help"], check=True, capture_output=True
        )
        return {"restic_open": restic_open, "pullback_start": time.monotonic() - started}


def _pair(bench: CopyBench, config: Path, n: int, first_copy: bool) -> tuple[dict, dict, dict]:
    """Copy, hand copy and rsync of the same state, the order alternating."""
    steps = {
        "copy": lambda: bench.copy(config, n),
        "restic copy": lambda: bench.hand_copy(n),
        "rsync": lambda: bench.rsync(n),
    }
    order = list(steps) if first_copy else list(reversed(steps))
    done = {name: steps[name]() for name in order}
    return done["copy"], done["restic copy"], done["rsync"]


def run(work: Path, scale: float, repeat: int) -> dict:
    load = os.getloadavg()
    bench = CopyBench(work, scale)
    bench.setup()
    days = ("day one", "next day", "no-op")
    rows: dict[str, dict[str, list]] = {
        side: {day: [] for day in days} for side in ("copy", "restic copy", "rsync")
    }
    primary_growth: dict[str, list[int]] = {"day one": [], "next day": []}
    archive: dict[str, list[int]] = {"day one": [], "next day": []}
    probes, pulls = [], {"day one": [], "next day": []}
    try:
        for n in range(repeat):
            config = bench.config(n)
            primary = work / f"repos-{n}" / HOST
            for day in ("day one", "next day"):
                if day == "next day":
                    dataset.mutate(bench.data, seed=300 + n)
                bench.pullback_pack()
                archive[day].append(bench.archive.stat().st_size)
                before = du(primary)
                pulls[day].append(bench.pull(config))
                primary_growth[day].append(du(primary) - before)
                result = _pair(bench, config, n, first_copy=(n + (day == "next day")) % 2 == 0)
                for side, value in zip(("copy", "restic copy", "rsync"), result, strict=True):
                    rows[side][day].append(value)
            result = _pair(bench, config, n, first_copy=n % 2 == 1)
            for side, value in zip(("copy", "restic copy", "rsync"), result, strict=True):
                rows[side]["no-op"].append(value)
            probes.append(bench.probe(n))
            snapshots = subprocess.run(
                ["restic", "-r", str(work / f"copy-{n}" / HOST), "snapshots", "--json"],
                env=bench.env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            if len(json.loads(snapshots)) != 2:
                raise SystemExit(f"the copy holds {snapshots!r}, not the two snapshots")
    finally:
        bench.stop()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "scale": scale,
        "repeat": repeat,
        "cpus": os.cpu_count(),
        "loadavg": {"start": load, "end": os.getloadavg()},
        "archive_bytes": archive,
        "pull_seconds": pulls,
        "primary_growth": primary_growth,
        "rows": rows,
        "probes": probes,
        "note": "local primary and copy on the same disk; rsync local (whole files); "
        "copy bytes = du -sb growth of the copy repository; rsync bytes = --stats "
        "'Total bytes sent'; 'restic copy' = restic copy by hand into its own repository",
    }


def days_of(rows: dict) -> list[str]:
    return list(rows["copy"])


def _med(values: list[dict], key: str) -> float:
    return statistics.median(v[key] for v in values)


def _split(values: list[dict]) -> str:
    """The copy's median seconds per restic command (calls summed), and the rest."""
    names = dict.fromkeys(name for v in values for name, _, _ in v["phases"])
    parts = []
    for name in names:
        times = [sum(s for n, _, s in v["phases"] if n == name) for v in values]
        calls = max(sum(1 for n, _, _ in v["phases"] if n == name) for v in values)
        label = "rest (Python, du, outputs)" if name == "other" else f"restic {name} x{calls}"
        parts.append(f"{label} {statistics.median(times):.2f}")
    return ", ".join(parts)


def report(results: dict) -> str:
    rows = results["rows"]
    mb = 1e6
    lines = [
        f"daily copy vs rsync of the repository, scale {results['scale']:g}, medians of "
        f"{results['repeat']}, {results['cpus']} CPUs, {results['date']}, load average "
        f"{results['loadavg']['start'][0]:.1f} -> {results['loadavg']['end'][0]:.1f}",
        "",
        f"{'':9} {'copy s':>7} {'copy MB':>8} {'rsync s':>8} {'rsync MB':>9} {'time x':>7}"
        f" {'bytes x':>8} {'restic copy s':>14} {'primary +MB':>12}",
    ]
    for day in ("day one", "next day", "no-op"):
        copy_s, copy_b = _med(rows["copy"][day], "seconds"), _med(rows["copy"][day], "bytes")
        rsync_s, rsync_b = _med(rows["rsync"][day], "seconds"), _med(rows["rsync"][day], "bytes")
        hand_s = _med(rows["restic copy"][day], "seconds")
        growth = results["primary_growth"].get(day)
        growth_s = f"{statistics.median(growth) / mb:12.2f}" if growth else f"{'-':>12}"
        lines.append(
            f"{day:9} {copy_s:7.2f} {copy_b / mb:8.2f} {rsync_s:8.2f} {rsync_b / mb:9.2f}"
            f" {copy_s / rsync_s:7.2f} {copy_b / rsync_b if rsync_b > 0 else float('nan'):8.2f}"
            f" {hand_s:14.2f} {growth_s}"
        )
    literal = [_med(rows["rsync"][d], "literal") / mb for d in ("day one", "next day")]
    probe = results["probes"]
    lines += [f"copy s, {day}: {_split(rows['copy'][day])}" for day in days_of(rows)]
    lines += [
        "(time x, bytes x: copy over rsync; copy MB: du -sb growth of the copy repository;",
        " rsync MB: 'Total bytes sent'; literal data day one "
        f"{literal[0]:.2f} MB, next day {literal[1]:.2f} MB)",
        f"fixed costs: restic start + key derivation (cat config) "
        f"{statistics.median(p['restic_open'] for p in probe):.2f} s, "
        f"pullback-server start (--help) "
        f"{statistics.median(p['pullback_start'] for p in probe):.2f} s",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/pullback-bench-copy"))
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    for stale in args.work.glob("*"):  # sshd host keys, sandboxes, repositories of a last run
        if not stale.name.startswith("data-"):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()
    results = run(args.work, args.scale, args.repeat)
    print(report(results))
    if not args.no_save:
        out = HERE / "results" / f"copy-{results['date'][:10]}.json"
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
