"""Pulls into a local repository against pulls into a REST one (``rclone serve restic`` on
loopback, append-only), on the same data, in the same run (issue 19, docs/scaling.md).

    python -m bench.remote [--scale 0.25] [--repeat 2] [--work DIR] [--no-save]

For each side: day one (a full pull into an empty repository) and the next day after
`mutate` (full archives: what reaches restic is the same either way). Reports seconds and
MB/s of archive bytes stored, and the server's CPU seconds (its process tree, restic and
rclone's server included for the REST side) per pull. Writes bench/results/remote-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import yaml

from bench import dataset
from bench.run import HERE, Bench
from tests.helpers.rest_store import RestEndpoint


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class RemoteBench(Bench):
    def pull(self, config: Path) -> tuple[float, float]:
        """One pull: (wall seconds, CPU seconds of the pull's process tree)."""
        self.offer_again()
        argv = [self.py, "-m", "pullback.server.cli", "-q", "--config", str(config), "pull"]
        cpu, started = _cpu(), time.monotonic()
        subprocess.run(argv, check=True)
        return time.monotonic() - started, _cpu() - cpu

    def configs(self, n: int, rest: RestEndpoint) -> tuple[Path, Path]:
        """A fresh local-repository config and a fresh REST-repository config."""
        local = self.server_config(self.work / f"local-state-{n}", self.work / f"local-repos-{n}")
        remote = self.server_config(self.work / f"rest-state-{n}", self.work / f"unused-{n}")
        data = yaml.safe_load(remote.read_text())
        data["backend"]["repository_url"] = rest.url(f"r{n}-{{host}}")
        remote.write_text(yaml.safe_dump(data))
        return local, remote


def run(work: Path, scale: float, repeat: int) -> dict:
    bench = RemoteBench(work, scale)
    bench.setup()
    store = work / "rest-store"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    rest = RestEndpoint(store, append_only=True).start()
    rows: dict[str, dict[str, list]] = {
        side: {"day one": [], "next day": []} for side in ("local", "rest")
    }
    try:
        bench.pullback_pack()
        size = bench.archive.stat().st_size
        for n in range(repeat):
            local, remote = bench.configs(n, rest)
            order = [("local", local), ("rest", remote)]
            for side, config in order if n % 2 == 0 else reversed(order):
                rows[side]["day one"].append(bench.pull(config))
            dataset.mutate(bench.data, seed=200 + n)
            bench.pullback_pack()
            for side, config in order if n % 2 else reversed(order):
                rows[side]["next day"].append(bench.pull(config))
    finally:
        rest.stop()
        bench.stop()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "scale": scale,
        "repeat": repeat,
        "archive_bytes": size,
        "rows": rows,
        "note": "REST: rclone serve restic --append-only on 127.0.0.1, no TLS",
    }


def report(results: dict) -> str:
    mb = results["archive_bytes"] / 1e6
    lines = [
        f"pulls into a local vs a REST repository, scale {results['scale']:g} "
        f"(archive {mb:.0f} MB), medians of {results['repeat']}, {results['date']}",
        "",
        f"{'':10} {'local s':>8} {'rest s':>8} {'ratio':>6} {'local MB/s':>11} {'rest MB/s':>10}"
        f" {'local cpu':>10} {'rest cpu':>9}",
    ]
    for row in ("day one", "next day"):
        local = statistics.median(t for t, _ in results["rows"]["local"][row])
        remote = statistics.median(t for t, _ in results["rows"]["rest"][row])
        local_cpu = statistics.median(c for _, c in results["rows"]["local"][row])
        remote_cpu = statistics.median(c for _, c in results["rows"]["rest"][row])
        lines.append(
            f"{row:10} {local:8.2f} {remote:8.2f} {remote / local:6.2f} {mb / local:11.1f}"
            f" {mb / remote:10.1f} {local_cpu:10.2f} {remote_cpu:9.2f}"
        )
    lines.append("(cpu: the pull's process tree; rclone's own CPU is not in the rest column)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/pullback-bench-remote"))
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    results = run(args.work, args.scale, args.repeat)
    print(report(results))
    if not args.no_save:
        out = HERE / "results" / f"remote-{results['date'][:10]}.json"
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
