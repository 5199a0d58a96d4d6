"""pullback's next day over a rate-limited link, against rsync + restic and the hand pipeline.

    python -m bench.wan [--scale 1] [--rate 100mbit] [--repeat 1] [--full-archives]
                        [--work DIR] [--no-save]

The client lives in a network namespace (``pbwan<tag>``) whose only interface is one end of
a veth pair (``eth0``, no default route); the other end (``pbwan<tag>h``) stays in this
namespace. Both ends are limited to --rate with ``tc ... tbf`` (this kernel has no netem),
so everything between the server side (here) and the client crosses that one link. Two
private sshds run in the namespace on its veth address: one whose key forces
``pullback-client serve`` (port 22), one plain, as root, for ``ssh cat`` and rsync (2222).

The data is bench/dataset.py's at --scale. Day one runs every row once to prime its side
(pullback's staging and repository, the hand pipeline's kept tree and repository,
rsync's kept tree and repository); then, per repetition, ``mutate`` and measure each row
on the same mutated data (the order rotates):

  pullback   pullback-client run (in the namespace) + pullback-server pull (restic)
  by hand    tar -c | zstd -T0 -3 into a file (in the namespace); ssh cat | zstd -d |
             tar -x into a kept tree; restic backup (no --ignore-inode, as pullback)
  rsync      rsync -a --delete -e ssh into a kept tree; restic backup

Bytes on the wire are rx_bytes + tx_bytes of the host-side veth around each row. Also the
client's pack (its run time and the newest archive's size) on day one against the next
day. Targets (issue "incremental pulls"): next-day time, pullback <= rsync + restic;
wire bytes, pullback <= 1.5 x rsync; next-day pack <= 0.3 x day one's.

The client runs with its defaults (``incremental.enabled: auto``: day one's pull tells it
that the server applies deltas, so the next day is a delta). --full-archives writes
``incremental: {enabled: false}`` and measures full archives every day instead.

The pristine dataset is cached in --work (``data-<scale>``, never mutated: each run works
on a copy); everything else (namespace, veth, sshds, the run's directory) is removed at
the end, also on Ctrl-C. Raw figures go to bench/results/wan-<date>.json, or
wan-<scale>-<date>.json at another scale than 1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench import dataset
from bench.run import HERE, Bench, installed_state, timed, trust_and_password
from bench.transfer import ssh_argv
from tests.helpers.client import ClientSandbox
from tests.helpers.sshd import Sshd, make_key, serve_command

PREFIX = "pbwan"  # the test suite uses pb<4 hex digits>..., pbprobe, pbq<digits>
SERVE_PORT, PLAIN_PORT = 22, 2222
ROWS = ("pullback", "by hand", "rsync")
TARGETS = {
    "time": 1.0,  # pullback next-day time / rsync + restic's
    "wire": 1.5,  # pullback next-day bytes on the wire / rsync's
    "pack": 0.3,  # pullback next-day client pack / day one's
}
UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bps": 8, "kbps": 8e3, "mbps": 8e6}


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def rate_bits(rate: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-z]+)", rate.strip().lower())
    if not match or match.group(2) not in UNITS:
        raise ValueError(f"--rate {rate!r}: a number and one of {', '.join(UNITS)}")
    return float(match.group(1)) * UNITS[match.group(2)]


class Link:
    """A namespace behind one veth pair, rate-limited both ways; ``close()`` removes it."""

    def __init__(self, rate: str):
        self.rate = rate
        tag = f"{random.randrange(16**4):04x}"
        self.netns, self.host_if = f"{PREFIX}{tag}", f"{PREFIX}{tag}h"
        taken = _ip("-4", "-o", "addr").stdout
        while True:  # a /30 in 10.250-254.x.x: netfleet takes 10.100-249.0.0/16
            a, b, c = random.randrange(250, 255), random.randrange(256), random.randrange(64)
            if f" 10.{a}.{b}." not in taken:
                break
        self.host_addr, self.peer = f"10.{a}.{b}.{4 * c + 1}", f"10.{a}.{b}.{4 * c + 2}"
        bytes_per_s = rate_bits(rate) / 8
        # tbf: burst of 10 ms at the rate (at least 64 KiB, one GSO packet), queue of 50 ms
        self.tbf = ["tbf", "rate", rate, "burst", str(max(65536, int(bytes_per_s / 100)))]
        self.tbf += ["latency", "50ms"]
        self.created = False

    def open(self) -> Link:
        _ip("netns", "add", self.netns)
        self.created = True
        _ip(
            "link", "add", self.host_if, "type", "veth", "peer", "name", "eth0", "netns", self.netns
        )
        _ip("addr", "add", f"{self.host_addr}/30", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        _ip("-n", self.netns, "addr", "add", f"{self.peer}/30", "dev", "eth0")
        _ip("-n", self.netns, "link", "set", "eth0", "up")
        _ip("-n", self.netns, "link", "set", "lo", "up")
        for prefix, dev in (([], self.host_if), (["ip", "netns", "exec", self.netns], "eth0")):
            subprocess.run(
                [*prefix, "tc", "qdisc", "replace", "dev", dev, "root", *self.tbf],
                check=True,
                capture_output=True,
                text=True,
            )
        return self

    def wire_bytes(self) -> int:
        stats = Path("/sys/class/net") / self.host_if / "statistics"
        return sum(int((stats / name).read_text()) for name in ("rx_bytes", "tx_bytes"))

    def inside(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def close(self) -> None:
        if not self.created:
            return
        # what still runs in the namespace was started by this bench (sshd sessions)
        pids = _ip("netns", "pids", self.netns, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _ip("link", "del", self.host_if, check=False)
        _ip("netns", "del", self.netns, check=False)
        self.created = False


class WanBench(Bench):
    """bench.run's Bench with the client's sshds in the namespace, reached over the link."""

    def __init__(self, work: Path, scale: float, link: Link, data: Path, incremental: bool):
        super().__init__(work, scale)
        self.link, self.data, self.incremental = link, data, incremental
        self.serve = self.plain = None

    def setup(self) -> None:
        self.key = make_key(self.work / "key")
        self.box = ClientSandbox(self.work / "client", hostname="bench")
        # the client's own default (auto), or full archives only
        incremental = {} if self.incremental else {"enabled": False}
        self.box.write_config(
            keep_last=1, keep_days=0, min_free_space="1M", incremental=incremental
        )
        self.box.add_service("data", f"service: {{name: data}}\nfiles: {{paths: [{self.data}]}}\n")
        pub = Path(f"{self.key}.pub")
        where = {"address": self.link.peer, "netns": self.link.netns}
        self.serve = Sshd(
            self.work / "sshd-serve",
            pub,
            serve_command(self.box.config, self.py),
            port=SERVE_PORT,
            **where,
        ).start()
        self.plain = Sshd(
            self.work / "sshd-plain", pub, "", plain=True, port=PLAIN_PORT, **where
        ).start()
        self.known, self.password_file = trust_and_password(self.work, self.serve, self.plain)
        self.ssh_cmd = ssh_argv(self.key, self.known, self.plain.port)
        self.remote_login = f"{self.plain.user}@{self.link.peer}"
        self.ssh = [*self.ssh_cmd, self.remote_login]
        # each side's day-one state, kept across the days
        self.pb_state, self.pb_repos = self.work / "pb-state", self.work / "pb-repos"
        self.fresh_repo(self.pb_repos / "bench")
        self.hand_out = self.work / "hand-client" / "hand.tar.zst"  # the client's file
        self.hand_out.parent.mkdir()
        self.hand_tree, self.hand_repo = self.work / "hand-tree", self.work / "hand-repo"
        self.hand_tree.mkdir()
        self.fresh_repo(self.hand_repo)
        self.rsync_tree, self.rsync_repo = self.work / "rsync-tree", self.work / "rsync-repo"
        self.rsync_tree.mkdir()
        self.fresh_repo(self.rsync_repo)

    def stop(self) -> None:
        for sshd in (self.serve, self.plain):
            if sshd is not None:
                sshd.stop()

    def server_config(self, state: Path, repos: Path) -> Path:
        path = super().server_config(state, repos)
        settings = yaml.safe_load(path.read_text())
        settings["hosts"][0]["address"] = self.link.peer
        path.write_text(yaml.safe_dump(settings))
        return path

    def restic_backup(self, tree: Path, repo: Path, host: str) -> float:
        """The hand pipelines' store, with pullback's own safety: no ``--ignore-inode``
        (under which restic 0.14 compares no ctime and keeps a file's older bytes when it
        was rewritten with its old size and mtime; pullback 0.2.1 dropped it)."""
        return timed(
            ["restic", "-q", "-r", str(repo), "backup", "--host", host, "."],
            cwd=tree,
            env=self.env,
            stdout=subprocess.DEVNULL,
        )

    # -- the rows: each returns its figures, bytes on the wire included --------------------

    def measure(self, row: str) -> dict:
        before, started = self.link.wire_bytes(), time.monotonic()
        parts = {"pullback": self.row_pullback, "by hand": self.row_hand, "rsync": self.row_rsync}[
            row
        ]()
        return {
            "seconds": time.monotonic() - started,
            "wire_bytes": self.link.wire_bytes() - before,
            **parts,
        }

    def row_pullback(self) -> dict:
        client_run = timed(
            self.link.inside(
                [
                    self.py,
                    "-m",
                    "pullback.client.cli",
                    "-q",
                    "--config",
                    str(self.box.config),
                    "run",
                ]
            )
        )
        archive = self.box.published()[-1]
        config = self.server_config(self.pb_state, self.pb_repos)
        pull = timed([self.py, "-m", "pullback.server.cli", "-q", "--config", str(config), "pull"])
        return {
            "client_run": client_run,
            "pull": pull,
            "archive": archive.name,
            "archive_bytes": archive.stat().st_size,
        }

    def row_hand(self) -> dict:
        pack = timed(
            self.link.inside(
                [
                    "sh",
                    "-c",
                    f"tar -c -f - -C {self.data.parent} {self.data.name} "
                    f"| zstd -q -T0 -3 -c > {self.hand_out}",
                ]
            )
        )
        fetch = timed(
            [
                "sh",
                "-c",
                f"{shlex.join(self.ssh)} cat {self.hand_out} | zstd -q -d -c "
                f"| tar -x -f - -C {self.hand_tree}",
            ]
        )
        backup = self.restic_backup(self.hand_tree, self.hand_repo, "bench-hand")
        return {
            "pack": pack,
            "fetch_unpack": fetch,
            "restic": backup,
            "archive_bytes": self.hand_out.stat().st_size,
        }

    def row_rsync(self) -> dict:
        rsync = timed(
            [
                "rsync",
                "-a",
                "--delete",
                "-e",
                shlex.join(self.ssh_cmd),
                f"{self.remote_login}:{self.data}/",
                f"{self.rsync_tree}/",
            ]
        )
        backup = self.restic_backup(self.rsync_tree, self.rsync_repo, "bench-rsync")
        return {"rsync": rsync, "restic": backup}


def run(work: Path, scale: float, rate: str, repeat: int, incremental: bool) -> dict:
    cache = work / f"data-{scale:g}"
    if not cache.exists():
        partial = work / f".making-data-{scale:g}"
        shutil.rmtree(partial, ignore_errors=True)
        dataset.make(partial / cache.name, scale)
        Path(partial / f"{cache.name}.json").rename(work / f"{cache.name}.json")
        (partial / cache.name).rename(cache)
        partial.rmdir()
    info = json.loads((work / f"{cache.name}.json").read_text())
    results: dict = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "scale": scale,
        "rate": rate,
        "repeat": repeat,
        "incremental": incremental,
        "cpus": os.cpu_count(),
        "dataset": info,
        "day_one": {},
        "next_days": [],
    }
    rundir = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    link = Link(rate)
    bench = None
    try:
        data = rundir / cache.name  # the client's data: a copy, mutated in place
        subprocess.run(["cp", "-a", str(cache), str(data)], check=True)
        shutil.copy2(work / f"{cache.name}.json", rundir / f"{cache.name}.json")
        link.open()
        results["link"] = {
            "netns": link.netns,
            "veth": link.host_if,
            "addresses": [link.host_addr, link.peer],
            "qdisc": " ".join(link.tbf),
        }
        bench = WanBench(rundir, scale, link, data, incremental)
        bench.setup()
        for row in ROWS:
            results["day_one"][row] = bench.measure(row)
            print(f"day one   {row:9} {_brief(results['day_one'][row])}", file=sys.stderr)
        for day in range(repeat):
            results.setdefault("mutations", []).append(dataset.mutate(data, seed=100 + day))
            order = ROWS[day % len(ROWS) :] + ROWS[: day % len(ROWS)]
            figures = {}
            for row in order:
                figures[row] = bench.measure(row)
                print(f"next day  {row:9} {_brief(figures[row])}", file=sys.stderr)
            results["next_days"].append(figures)
    finally:
        if bench is not None:
            bench.stop()
        link.close()
        shutil.rmtree(rundir, ignore_errors=True)
    return results


def _brief(figures: dict) -> str:
    return f"{figures['seconds']:.2f} s, {figures['wire_bytes'] / 1e6:.1f} MB on the wire"


def _median(results: dict, row: str, key: str) -> float:
    return statistics.median(day[row][key] for day in results["next_days"])


def report(results: dict) -> str:
    mode = "incremental on" if results["incremental"] else "incremental off (full archives)"
    lines = [
        f"pullback WAN bench, scale {results['scale']:g} "
        f"({results['dataset']['bytes'] / 1e6:.0f} MB), {results['rate']} each way, "
        f"next day after mutate, medians of {results['repeat']}, {results['cpus']} CPUs, "
        f"{mode}, {results['date']}",
        "",
        f"{'next day':10} {'time s':>8} {'wire MB':>9}  parts",
    ]
    parts = {
        "pullback": [("client_run", "client run"), ("pull", "pull")],
        "by hand": [("pack", "tar|zstd"), ("fetch_unpack", "ssh cat|unpack"), ("restic", "restic")],
        "rsync": [("rsync", "rsync"), ("restic", "restic")],
    }
    for row in ROWS:
        split = ", ".join(f"{label} {_median(results, row, key):.2f}" for key, label in parts[row])
        lines.append(
            f"{row:10} {_median(results, row, 'seconds'):8.2f} "
            f"{_median(results, row, 'wire_bytes') / 1e6:9.1f}  {split}"
        )
    day_one = results["day_one"]
    lines.append(
        f"{'(day one)':10} "
        + ", ".join(
            f"{row} {day_one[row]['seconds']:.2f} s / {day_one[row]['wire_bytes'] / 1e6:.1f} MB"
            for row in ROWS
        )
    )
    pack_one = day_one["pullback"]["client_run"]
    pack_next = _median(results, "pullback", "client_run")
    size_one = day_one["pullback"]["archive_bytes"]
    size_next = _median(results, "pullback", "archive_bytes")
    lines += [
        "",
        f"{'client pack':22} {'day one':>9} {'next day':>9} {'ratio':>7}",
        f"{'run s':22} {pack_one:9.2f} {pack_next:9.2f} {pack_next / pack_one:7.2f}",
        f"{'archive MB':22} {size_one / 1e6:9.1f} {size_next / 1e6:9.1f} "
        f"{size_next / size_one:7.2f}",
        "",
        f"{'target':44} {'value':>7}  bar",
    ]
    checks = {
        "time": (
            "next-day time, pullback / rsync + restic",
            _median(results, "pullback", "seconds") / _median(results, "rsync", "seconds"),
        ),
        "wire": (
            "bytes on the wire, pullback / rsync",
            _median(results, "pullback", "wire_bytes") / _median(results, "rsync", "wire_bytes"),
        ),
        "pack": ("client pack time, next day / day one", pack_next / pack_one),
    }
    results["targets"] = {}
    for name, (label, value) in checks.items():
        met = value <= TARGETS[name]
        results["targets"][name] = {"value": value, "bar": TARGETS[name], "met": met}
        lines.append(
            f"{label:44} {value:7.2f}  <= {TARGETS[name]:g}  {'met' if met else 'NOT MET'}"
        )
    return "\n".join(lines)


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # so that the finally blocks run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--rate", default="100mbit", help="tc rate, both directions")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--full-archives",
        action="store_true",
        help="write incremental: {enabled: false} into client.yaml (full archives daily)",
    )
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/pullback-bench-wan"))
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results")
    args = parser.parse_args(argv)
    rate_bits(args.rate)
    if os.geteuid() != 0:
        parser.error("needs root (ip netns, veth, tc)")
    args.work.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _terminate)
    with installed_state():
        results = run(args.work, args.scale, args.rate, args.repeat, not args.full_archives)
    print(report(results))
    if not args.no_save:
        scale = "" if args.scale == 1 else f"{args.scale:g}-"  # one file per scale and day
        out = HERE / "results" / f"wan-{scale}{dt.date.today().isoformat()}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
