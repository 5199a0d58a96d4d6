"""Files the tests write the way an administrator must (secrets readable by root alone),
restored trees proven the way an administrator would (``sha256sum -c``), and Python run
as an unprivileged user over them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def secret_file(path: Path, text: str) -> Path:
    """Write ``text`` (a line: a newline is added if it has none) to ``path``, mode 0600;
    return ``path``."""
    path.write_text(text if text.endswith("\n") else text + "\n")
    path.chmod(0o600)
    return path


def sha256sum_check(directory: Path) -> None:
    """Assert that GNU sha256sum proves every file ``directory/MANIFEST.sha256`` names."""
    result = subprocess.run(
        ["sha256sum", "--check", "--strict", "MANIFEST.sha256"],
        cwd=directory,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def open_to_others(path: Path) -> None:
    """Let every user reach ``path``: search (and read) added to it and each directory
    above it (pytest's temporary directories are root's alone)."""
    for up in (path, *path.parents):
        if up == Path("/"):
            break
        up.chmod(up.stat().st_mode | 0o005)


def as_nobody(code: str) -> subprocess.CompletedProcess:
    """Run the Python ``code`` as the user nobody (runuser: the tests run as root),
    with this interpreter and its import path; return the finished process (text)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = ["runuser", "-u", "nobody", "--", sys.executable, "-c", code]
    return subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, timeout=60)


def thread_read_bytes() -> int:
    """The bytes this thread has read (``rchar`` of /proc/thread-self/io: every
    read(2) and pread(2), from the page cache or not)."""
    fields = dict(
        line.split(": ") for line in Path("/proc/thread-self/io").read_text().splitlines()
    )
    return int(fields["rchar"])
