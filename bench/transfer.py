"""Transfer throughput: pullback's byte stream vs ``scp`` of the same file, to disk.

Starts two loopback sshds (one forcing ``pullback-client serve``, one plain with sftp for
scp), then alternates: scp the file, fetch it the way ``pullback-server pull`` does
(OpenSSH child -> sha256 -> append to the partial file -> fsync). Prints medians and the
ratio. Usage: python -m bench.transfer [--size-mib 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from pullback.server.config import load_server_config
from pullback.server.remote import Remote
from tests.helpers.client import ClientSandbox
from tests.helpers.sshd import Sshd, make_key, serve_command


def ssh_argv(key: Path, known_hosts: Path, port: int, tool: str = "ssh") -> list[str]:
    """``ssh`` (or ``scp``, quiet) with only ``key``, host keys checked against
    ``known_hosts``, no prompt and no user configuration: the hand rows' way in (login and
    command, or the files, to follow)."""
    return [
        tool,
        *(["-q"] if tool == "scp" else []),
        "-F",
        "/dev/null",
        "-i",
        str(key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-P" if tool == "scp" else "-p",
        str(port),
    ]


def _scp(key: Path, known: Path, sshd: Sshd, source: Path, target: Path) -> float:
    started = time.monotonic()
    subprocess.run(
        [
            *ssh_argv(key, known, sshd.port, tool="scp"),
            f"{sshd.user}@127.0.0.1:{source}",
            str(target),
        ],
        check=True,
    )
    with open(target, "rb+") as handle:
        os.fsync(handle.fileno())
    return time.monotonic() - started


def _pullback(remote: Remote, name: str, target: Path) -> float:
    started = time.monotonic()
    digest = hashlib.sha256()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    try:
        for data in remote.stream(name, 0):
            digest.update(data)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.monotonic() - started


def bench_remote(key: Path, known: Path, port: int, user: str, idle_timeout: str) -> Remote:
    """A Remote for the bench host, configured as an administrator would: by server.yaml."""
    path = known.parent / "bench-server.yaml"
    settings = {
        "ssh": {"key_file": str(key), "known_hosts": str(known), "idle_timeout": idle_timeout},
        "hosts": [{"name": "bench", "address": "127.0.0.1", "port": port, "user": user}],
    }
    path.write_text(yaml.safe_dump(settings))
    config = load_server_config(path)
    return Remote(config.host("bench"), config.ssh)


def measure(size_mib: int, repeat: int, root: Path) -> dict:
    key = make_key(root / "key")
    box = ClientSandbox(root / "client", hostname="bench")
    box.archives.mkdir(parents=True)
    name = "bench-20260101T000000Z.tar.zst"
    source = box.archives / name
    with open(source, "wb") as handle:
        for _ in range(size_mib):
            handle.write(os.urandom(1 << 20))
    serve = Sshd(root / "sshd-serve", Path(f"{key}.pub"), serve_command(box.config)).start()
    plain = Sshd(root / "sshd-plain", Path(f"{key}.pub"), forced_command="", plain=True).start()
    known = root / "known_hosts"
    known.write_text(serve.known_hosts_line() + plain.known_hosts_line())
    remote = bench_remote(key, known, serve.port, serve.user, "60s")
    times: dict[str, list[float]] = {"scp": [], "pullback": []}
    try:
        for _ in range(repeat):
            times["scp"].append(_scp(key, known, plain, source, root / "scp.out"))
            (root / "scp.out").unlink()
            times["pullback"].append(_pullback(remote, name, root / "pb.out"))
            (root / "pb.out").unlink()
    finally:
        serve.stop()
        plain.stop()
    mib = size_mib * (1 << 20) / 1e6
    result = {k: statistics.median(v) for k, v in times.items()}
    return {
        "size_mb": round(mib, 1),
        "scp_s": round(result["scp"], 3),
        "pullback_s": round(result["pullback"], 3),
        "scp_mb_s": round(mib / result["scp"], 1),
        "pullback_mb_s": round(mib / result["pullback"], 1),
        "ratio": round(result["scp"] / result["pullback"], 3),
        "runs": times,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pullback-bench-", dir="/var/tmp") as tmp:
        r = measure(args.size_mib, args.repeat, Path(tmp))
    print(f"file {r['size_mb']} MB, medians of {args.repeat}, to disk")
    print(f"scp:      {r['scp_s']:7.2f} s  {r['scp_mb_s']:7.1f} MB/s")
    print(f"pullback: {r['pullback_s']:7.2f} s  {r['pullback_mb_s']:7.1f} MB/s")
    print(f"pullback / scp throughput: {r['ratio']:.2f} (bar: >= 0.90)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
