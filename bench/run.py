"""pullback against the pipelines a sysadmin would write by hand, side by side, in one run.

    python -m bench.run [--scale 1.0] [--repeat 3] [--rss-scales 1,4] [--work DIR]

Measures (medians of alternating repetitions, after a warm-up of each):
  pack        pullback-client run (files task)  vs  tar -c | zstd -T0 -3
  transfer    pullback's byte stream             vs  scp of the same archive
  full pull   pullback-server pull (restic)      vs  ssh cat | zstd -d | tar -x; restic backup
  next day    the same after `mutate` (1 % changed), into the existing repository and staging
  seed        tar -czf; gzip -t; scp; tar -xzf; restic backup  (the old design, for reference)
  peak RSS    of pullback-server pull, at each --rss-scales (the pullback process, and the
              whole process tree as /usr/bin/time -v reports it)
Prints a table and writes bench/results/<date>.json.
"""

from __future__ import annotations

import argparse
import atexit
import compileall
import contextlib
import datetime as dt
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench import dataset
from bench.transfer import _pullback as stream_to_disk
from bench.transfer import _scp as scp_to_disk
from bench.transfer import bench_remote, ssh_argv
from pullback.server.remote import Remote
from tests.helpers.client import ClientSandbox
from tests.helpers.sshd import Sshd, make_key, serve_command

HERE = Path(__file__).parent
PASSWORD = "bench-password"
BARS = {
    "pack": ("<=", 1.1),
    "transfer": (">=", 0.9),
    "full pull": ("<=", 1.1),
    "next day": ("<=", 0.6),
}
PEAK_WRAPPER = (
    "import resource, runpy, sys\n"
    "try:\n    runpy.run_module('pullback.server.cli', run_name='__main__')\n"
    "finally:\n"
    "    print('PEAK_SELF_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
    " file=sys.stderr)\n"
)


PACKAGE_DIRS = ("common", "client", "server", "plugins")
"""pullback's source directories (the package ``pullback``'s parts)."""


def byte_compile() -> None:
    """Byte-compile pullback's modules, as the Debian packages are at install (py3compile):
    otherwise, with PYTHONDONTWRITEBYTECODE set or an unwritable tree, every pullback
    process would compile its modules again, about 0.1 s each (measured: a next-day
    cycle starts six)."""
    for name in PACKAGE_DIRS:
        compileall.compile_dir(HERE.parent / name, quiet=1)


@functools.cache
def pullback_python() -> str:
    """The interpreter every pullback process of a bench runs with: by default as the
    Debian packages install pullback (Debian's ``/usr/bin/python3`` with its packaged
    libraries, python3-paramiko, python3-jsonschema and the rest, and pullback's modules
    in a plain ``pullback/`` package directory, byte-compiled), not as the development
    virtualenv runs it (PyPI's newer releases, and the editable install's import hook in
    front of every import: about 0.1 s more per process start, measured 2026-12-03).
    Returns the path of a small wrapper that runs it (so that sshd's forced command and
    ``ip netns exec`` can run it too); ``PULLBACK_BENCH_PYTHON=venv`` gives this
    process's own interpreter instead."""
    if os.environ.get("PULLBACK_BENCH_PYTHON") == "venv":
        return sys.executable
    tree = Path(tempfile.mkdtemp(prefix="pullback-bench-packaged-"))
    tree.chmod(0o755)  # (the bench's serve user runs it too)
    atexit.register(shutil.rmtree, tree, ignore_errors=True)
    (tree / "pullback").mkdir(mode=0o755)
    for name in PACKAGE_DIRS:
        (tree / "pullback" / name).symlink_to(HERE.parent / name)
    byte_compile()
    wrapper = tree / "python3"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={tree} exec /usr/bin/python3 "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


RECORD = Path("/var/lib/pullback/validated")
"""The record of documents found valid (pullback/common/validated.py)."""


@contextlib.contextmanager
def installed_state():
    """The record of validated documents, as pullback-common's postinst makes it (here
    root's, 0755: the bench's serve user is no pullback group member), for the bench's
    commands; removed after when this made it.
    Without it every pullback process loads the schema validator again (about 0.1 s of
    CPU each; the packages' processes do not). The benches' ``main`` functions hold it
    (not ``run``: the test suite's smoke test runs on a machine as it is)."""
    made = [p for p in (RECORD.parent, RECORD) if not p.exists()]
    for path in made:
        path.mkdir(mode=0o755)
        path.chmod(0o755)
    try:
        yield
    finally:
        if made:
            shutil.rmtree(made[0], ignore_errors=True)


def timed(argv, **kwargs) -> float:
    started = time.monotonic()
    subprocess.run(argv, check=True, **kwargs)
    return time.monotonic() - started


def trust_and_password(work: Path, *sshds: Sshd) -> tuple[Path, Path]:
    """Write ``work/known_hosts`` (the keys of ``sshds``) and ``work/repository.pass``
    (mode 0600). Returns their paths."""
    known = work / "known_hosts"
    known.write_text("".join(sshd.known_hosts_line() for sshd in sshds))
    password_file = work / "repository.pass"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    return known, password_file


class Bench:
    def __init__(self, work: Path, scale: float):
        byte_compile()
        self.work = work
        self.scale = scale
        self.py = pullback_python()
        self.env = {
            **os.environ,
            "RESTIC_PASSWORD": PASSWORD,
            "RESTIC_CACHE_DIR": str(work / "restic-cache"),
        }

    # -- set-up ---------------------------------------------------------------------------

    def setup(self) -> None:
        self.data = getattr(self, "data", None) or self.work / f"data-{self.scale:g}"
        if not self.data.exists():
            dataset.make(self.data, self.scale)
        self.key = (
            make_key(self.work / "key") if not (self.work / "key").exists() else self.work / "key"
        )
        self.box = ClientSandbox(self.work / "client", hostname="bench")
        # the client's own default (incremental: auto): a pack with no archive to build on
        # is full (the pack row); a next day after a pull is a delta (until 2026-12-02
        # this bench's client had deltas off: its next-day row measured full archives)
        self.box.write_config(keep_last=1, keep_days=0, min_free_space="1M", incremental={})
        self.box.add_service("data", f"service: {{name: data}}\nfiles: {{paths: [{self.data}]}}\n")
        self.serve = Sshd(
            self.work / "sshd-serve",
            Path(f"{self.key}.pub"),
            serve_command(self.box.config, self.py),
        ).start()
        self.plain = Sshd(
            self.work / "sshd-plain", Path(f"{self.key}.pub"), forced_command="", plain=True
        ).start()
        self.known, self.password_file = trust_and_password(self.work, self.serve, self.plain)
        self.ssh = [
            *ssh_argv(self.key, self.known, self.plain.port),
            f"{self.plain.user}@127.0.0.1",
        ]

    def stop(self) -> None:
        self.serve.stop()
        self.plain.stop()

    def server_config(self, state: Path, repos: Path) -> Path:
        path = state.parent / f"{state.name}.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "state_dir": str(state),
                    "lock_dir": str(self.work / "run"),
                    "backend": {
                        "type": "restic",
                        "repository_root": str(repos),
                        "password_file": str(self.password_file),
                    },
                    "ssh": {"key_file": str(self.key), "known_hosts": str(self.known)},
                    "hosts": [
                        {
                            "name": "bench",
                            "address": "127.0.0.1",
                            "port": self.serve.port,
                            "user": self.serve.user,
                        }
                    ],
                }
            )
        )
        return path

    def fresh_repo(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["restic", "init", "-q", "-r", str(path)], env=self.env, check=True, capture_output=True
        )

    # -- the pieces -----------------------------------------------------------------------

    def pullback_pack(self, keep: bool = False) -> float:
        """``pullback-client run``; the archives before it and the file cache are removed
        first (a first day, measured one at a time) unless ``keep``: a next day's delta
        builds on the client's chain, and without it the client makes a full archive
        (until 2026-12-02 the next-day row measured full archives that way). A full
        archive reads the cache's rows (and keeps the chunk lists of unchanged files), so
        a pack with the cache left would measure a periodic full, not a first day."""
        for archive in [] if keep else self.box.published():
            archive.unlink()
            archive.with_name(archive.name + ".json").unlink()
        if not keep:
            shutil.rmtree(self.box.root / "cache", ignore_errors=True)
        seconds = timed(
            [self.py, "-m", "pullback.client.cli", "-q", "--config", str(self.box.config), "run"]
        )
        self.archive = self.box.published()[-1]
        return seconds

    def hand_pack(self) -> float:
        out = self.work / "hand.tar.zst"
        return timed(
            [
                "sh",
                "-c",
                f"tar -c -f - -C {self.data.parent} {self.data.name} | zstd -q -T0 -3 -c > {out}",
            ]
        )

    def remote(self) -> Remote:
        return bench_remote(self.key, self.known, self.serve.port, self.serve.user, "120s")

    def pullback_transfer(self) -> float:
        return stream_to_disk(self.remote(), self.archive.name, self.work / "stream.out")

    def scp_transfer(self) -> float:
        return scp_to_disk(self.key, self.known, self.plain, self.archive, self.work / "scp.out")

    def offer_again(self) -> None:
        """A pull moves the archive to fetched/; put it back so the next side gets it too."""
        for side in (self.box.archives / "fetched").glob("*"):
            side.rename(self.box.archives / side.name)

    def pullback_pull(self, state: Path, repos: Path, peak: bool = False) -> float | dict:
        config = self.server_config(state, repos)
        self.offer_again()
        argv = [self.py, "-m", "pullback.server.cli", "-q", "--config", str(config), "pull"]
        if peak:
            argv = [
                "/usr/bin/time",
                "-v",
                self.py,
                "-c",
                PEAK_WRAPPER,
                "-q",
                "--config",
                str(config),
                "pull",
            ]
            started = time.monotonic()
            run = subprocess.run(argv, capture_output=True, text=True, check=True)
            seconds = time.monotonic() - started
            self_kb = int(run.stderr.split("PEAK_SELF_KB")[1].split()[0])
            tree_kb = int(run.stderr.split("Maximum resident set size (kbytes):")[1].split()[0])
            return {"seconds": seconds, "pullback_mb": self_kb / 1024, "tree_mb": tree_kb / 1024}
        return timed(argv)

    def hand_pull(self, staging: Path, repo: Path, archive: Path | None = None) -> float:
        """The hand pipeline's pull of ``archive`` (default: pullback's newest, a full
        one on the full-pull row; a next day passes the day's own tar|zstd archive,
        since pullback's is then a delta)."""
        self.offer_again()
        staging.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        subprocess.run(
            [
                "sh",
                "-c",
                " ".join(self.ssh) + f" cat {archive or self.archive} | "
                f"zstd -q -d -c | tar -x -f - -C {staging}",
            ],
            check=True,
        )
        subprocess.run(
            ["restic", "-q", "-r", str(repo), "backup", "--host", "bench", "."],
            cwd=staging,
            env=self.env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return time.monotonic() - started

    def seed_pipeline(self, repo: Path) -> float:
        tgz = self.work / "seed.tar.gz"
        landed = self.work / "seed-landed.tar.gz"
        unpacked = self.work / "seed-unpacked"
        shutil.rmtree(unpacked, ignore_errors=True)
        unpacked.mkdir()
        started = time.monotonic()
        subprocess.run(
            ["tar", "-czf", str(tgz), "-C", str(self.data.parent), self.data.name], check=True
        )
        subprocess.run(["gzip", "-t", str(tgz)], check=True)
        scp_to_disk(self.key, self.known, self.plain, tgz, landed)
        subprocess.run(["tar", "-xzf", str(landed), "-C", str(unpacked)], check=True)
        subprocess.run(
            ["restic", "-q", "-r", str(repo), "backup", "--host", "seed", "."],
            cwd=unpacked,
            env=self.env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return time.monotonic() - started


def alternate(repeat: int, ours, theirs) -> tuple[list[float], list[float]]:
    ours(), theirs()  # warm-up: caches and page cache for both sides
    a, b = [], []
    for i in range(repeat):
        if i % 2:
            b.append(theirs())
            a.append(ours())
        else:
            a.append(ours())
            b.append(theirs())
    return a, b


def run(work: Path, scale: float, repeat: int, rss_scales: list[float]) -> dict:
    bench = Bench(work, scale)
    bench.setup()
    results: dict = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "scale": scale,
        "repeat": repeat,
        "cpus": os.cpu_count(),
        "rows": {},
    }
    rows = results["rows"]
    try:
        ours, hand = alternate(repeat, bench.pullback_pack, bench.hand_pack)
        rows["pack"] = (ours, hand)
        ours, hand = alternate(repeat, bench.pullback_transfer, bench.scp_transfer)
        rows["transfer"] = (ours, hand)

        counter = iter(range(10_000))

        def full_ours():
            n = next(counter)
            repos = work / f"full-repos-{n}"
            bench.fresh_repo(repos / "bench")
            seconds = bench.pullback_pull(work / f"full-state-{n}", repos)
            return seconds

        def full_hand():
            n = next(counter)
            repo = work / f"hand-repo-{n}"
            bench.fresh_repo(repo)
            return bench.hand_pull(work / f"hand-staging-{n}", repo)

        ours, hand = alternate(repeat, full_ours, full_hand)
        rows["full pull"] = (ours, hand)
        # the next days build on the last full pull of each side
        last_ours = next(counter) - 1
        state, repos = work / f"full-state-{last_ours - 1}", work / f"full-repos-{last_ours - 1}"
        # the hand side's next days build on its own full pull of its own tar|zstd archive
        # (pullback's next-day archives are deltas), primed here, untimed
        hand_staging, hand_repo = work / "hand-next-staging", work / "hand-next-repo"
        shutil.rmtree(hand_staging, ignore_errors=True)
        bench.fresh_repo(hand_repo)
        bench.hand_pack()
        bench.hand_pull(hand_staging, hand_repo, bench.work / "hand.tar.zst")
        ours_days, hand_days = [], []
        for day in range(repeat):
            dataset.mutate(bench.data, seed=100 + day)
            bench.pullback_pack(keep=True)
            bench.hand_pack()  # the day's full archive, for the hand side (not timed here)
            hand_archive = bench.work / "hand.tar.zst"
            if day % 2:
                hand_days.append(bench.hand_pull(hand_staging, hand_repo, hand_archive))
                ours_days.append(bench.pullback_pull(state, repos))
            else:
                ours_days.append(bench.pullback_pull(state, repos))
                hand_days.append(bench.hand_pull(hand_staging, hand_repo, hand_archive))
        rows["next day"] = (ours_days, hand_days)
        seed_repo = work / "seed-repo"
        bench.fresh_repo(seed_repo)
        results["seed pipeline"] = bench.seed_pipeline(seed_repo)
    finally:
        bench.stop()
    results["peak"] = {}
    for rss_scale in rss_scales:
        peak_bench = Bench(work / f"peak-{rss_scale:g}", rss_scale)
        peak_bench.work.mkdir(exist_ok=True)
        peak_bench.data = work / f"data-{rss_scale:g}"
        peak_bench.setup()
        try:
            peak_bench.pullback_pack()
            repos = peak_bench.work / "repos"
            peak_bench.fresh_repo(repos / "bench")
            results["peak"][f"{rss_scale:g}"] = peak_bench.pullback_pull(
                peak_bench.work / "state", repos, peak=True
            )
        finally:
            peak_bench.stop()
    return results


def report(results: dict) -> str:
    lines = [
        f"pullback bench, scale {results['scale']:g}, medians of {results['repeat']}, "
        f"{results['cpus']} CPUs, {results['date']}",
        "",
        f"{'':12} {'pullback s':>11} {'hand s':>9} {'ratio':>7}  bar",
    ]
    for name, (ours, hand) in results["rows"].items():
        a, b = statistics.median(ours), statistics.median(hand)
        ratio = b / a if name == "transfer" else a / b
        op, bar = BARS[name]
        ok = ratio <= bar if op == "<=" else ratio >= bar
        label = "throughput vs scp" if name == "transfer" else "time vs hand"
        lines.append(
            f"{name:12} {a:11.2f} {b:9.2f} {ratio:7.2f}  {op} {bar} ({label}) "
            f"{'met' if ok else 'NOT MET'}"
        )
    lines.append(
        f"{'seed design':12} {results['seed pipeline']:>31.2f} s (tar -czf, gzip -t, "
        "scp, tar -xzf, restic backup)"
    )
    for scale, peak in results.get("peak", {}).items():
        lines.append(
            f"peak RSS at scale {scale}: pullback process {peak['pullback_mb']:.0f} MB, "
            f"whole tree (restic included) {peak['tree_mb']:.0f} MB, pull "
            f"{peak['seconds']:.1f} s  (bar: <= 150 MB, flat)"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rss-scales", default="1,4")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/pullback-bench"))
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    for stale in args.work.glob("*"):
        if not stale.name.startswith("data-") and stale.name != "restic-cache":
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()
    scales = [float(s) for s in args.rss_scales.split(",") if s]
    with installed_state():
        results = run(args.work, args.scale, args.repeat, scales)
    print(report(results))
    if not args.no_save:
        out = HERE / "results" / f"{dt.date.today().isoformat()}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
