"""Several hosts pulled at once, and a group sharing one repository (issue 19,
docs/scaling.md): what one more parallel host costs the server in memory and CPU, and
what cross-host deduplication saves when hosts hold the same data.

    python -m bench.fleet [--hosts 4] [--scale 0.1] [--work DIR] [--no-save]

``--hosts`` clients (each its own sandbox and sshd, all packing the same data set, as
machines built from one image would) are pulled three ways from fresh state: one host at
a time into a repository each (``parallel: 1``), all at once into a repository each
(``parallel: N``), and all at once into one repository (a ``group``). Reported: wall
seconds, the server's CPU seconds (its process tree), the peak resident memory of the
whole tree (sampled every 0.1 s from /proc), and the repositories' bytes on disk.
Writes bench/results/fleet-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import shutil
import subprocess
import threading
import time
from pathlib import Path

import yaml

from bench import dataset
from bench.run import HERE, PASSWORD, byte_compile, installed_state, pullback_python
from tests.helpers.client import ClientSandbox
from tests.helpers.sshd import Sshd, make_key, serve_command


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _tree_rss(root: int) -> int:
    """Bytes resident in ``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
        except OSError:
            continue
        pid = int(status.parent.name)
        children.setdefault(int(fields["PPid"]), []).append(pid)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


class FleetBench:
    def __init__(self, work: Path, scale: float, hosts: int):
        self.work, self.scale, self.count = work, scale, hosts

    def setup(self) -> None:
        self.data = self.work / f"data-{self.scale:g}"
        if not self.data.exists():
            dataset.make(self.data, self.scale)
        self.key = self.work / "key"
        if not self.key.exists():
            make_key(self.key)
        self.password_file = self.work / "repository.pass"
        self.password_file.write_text(PASSWORD + "\n")
        self.password_file.chmod(0o600)
        self.boxes, self.sshds = [], []
        known = []
        for n in range(self.count):
            for old in (self.work / f"client{n}", self.work / f"sshd{n}"):
                shutil.rmtree(old, ignore_errors=True)
            box = ClientSandbox(self.work / f"client{n}", hostname=f"host{n}")
            box.write_config(keep_last=1, keep_days=0, min_free_space="1M")
            box.add_service("data", f"service: {{name: data}}\nfiles: {{paths: [{self.data}]}}\n")
            sshd = Sshd(
                self.work / f"sshd{n}",
                Path(f"{self.key}.pub"),
                serve_command(box.config, pullback_python()),
            ).start()
            self.boxes.append(box)
            self.sshds.append(sshd)
            known.append(sshd.known_hosts_line())
        self.known = self.work / "known_hosts"
        self.known.write_text("".join(known))
        for box in self.boxes:
            subprocess.run(
                [
                    pullback_python(),
                    "-m",
                    "pullback.client.cli",
                    "-q",
                    "--config",
                    str(box.config),
                    "run",
                ],
                check=True,
            )

    def stop(self) -> None:
        for sshd in self.sshds:
            sshd.stop()

    def config(self, name: str, parallel: int, group: bool) -> Path:
        state, repos = self.work / f"{name}-state", self.work / f"{name}-repos"
        for path in (state, repos):
            shutil.rmtree(path, ignore_errors=True)
        hosts = [
            {
                "name": f"host{n}",
                "address": "127.0.0.1",
                "port": sshd.port,
                "user": sshd.user,
                **({"group": "image"} if group else {}),
            }
            for n, sshd in enumerate(self.sshds)
        ]
        path = self.work / f"{name}.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "state_dir": str(state),
                    "lock_dir": str(self.work / "run"),
                    "parallel": parallel,
                    "backend": {
                        "type": "restic",
                        "repository_root": str(repos),
                        "password_file": str(self.password_file),
                    },
                    "ssh": {"key_file": str(self.key), "known_hosts": str(self.known)},
                    "hosts": hosts,
                }
            )
        )
        return path

    def offer_again(self) -> None:
        for box in self.boxes:
            for side in (box.archives / "fetched").glob("*"):
                side.rename(box.archives / side.name)

    def pull(self, name: str, parallel: int, group: bool) -> dict:
        config = self.config(name, parallel, group)
        self.offer_again()
        argv = [
            pullback_python(),
            "-m",
            "pullback.server.cli",
            "-q",
            "--config",
            str(config),
            "pull",
        ]
        cpu, started = _cpu(), time.monotonic()
        process = subprocess.Popen(argv)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.1):
                peak[0] = max(peak[0], _tree_rss(process.pid))

        sampler = threading.Thread(target=sample)
        sampler.start()
        code = process.wait()
        done.set()
        sampler.join()
        if code != 0:
            raise SystemExit(f"{name}: pull exited {code}")
        repos = self.work / f"{name}-repos"
        return {
            "seconds": round(time.monotonic() - started, 2),
            "cpu_seconds": round(_cpu() - cpu, 2),
            "peak_rss_bytes": peak[0],
            "repository_bytes": sum(p.stat().st_size for p in repos.rglob("*") if p.is_file()),
        }


def run(work: Path, scale: float, hosts: int) -> dict:
    byte_compile()
    bench = FleetBench(work, scale, hosts)
    bench.setup()
    try:
        archive = bench.boxes[0].published()[-1].stat().st_size
        rows = {
            "one at a time": bench.pull("serial", 1, group=False),
            "all at once": bench.pull("parallel", hosts, group=False),
            "all at once, one group": bench.pull("group", hosts, group=True),
        }
    finally:
        bench.stop()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "scale": scale,
        "hosts": hosts,
        "archive_bytes": archive,
        "rows": rows,
        "note": "every host packs the same data set (hosts built from one image)",
    }


def report(results: dict) -> str:
    n, mb = results["hosts"], results["archive_bytes"] / 1e6
    lines = [
        f"{n} hosts, one archive of {mb:.0f} MB each (scale {results['scale']:g}), "
        f"{results['date']}",
        "",
        f"{'':24} {'s':>7} {'cpu s':>7} {'peak RSS MB':>12} {'repos MB':>9}",
    ]
    for name, row in results["rows"].items():
        lines.append(
            f"{name:24} {row['seconds']:7.2f} {row['cpu_seconds']:7.2f}"
            f" {row['peak_rss_bytes'] / 1e6:12.0f} {row['repository_bytes'] / 1e6:9.0f}"
        )
    one = results["rows"]["one at a time"]["peak_rss_bytes"]
    many = results["rows"]["all at once"]["peak_rss_bytes"]
    if n > 1:
        lines.append(f"memory per further parallel host: {(many - one) / (n - 1) / 1e6:.0f} MB")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/pullback-bench-fleet"))
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    with installed_state():
        results = run(args.work, args.scale, args.hosts)
    print(report(results))
    if not args.no_save:
        out = HERE / "results" / f"fleet-{results['date'][:10]}.json"
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
