"""Where the shipped systemd units let pullback write, as systemd has loaded them.

The units run with ``ProtectSystem=strict``: everything outside their
``ReadWritePaths=`` (drop-ins included) is read-only to a timer run, even for root,
while the same command run by hand writes anywhere. ``check`` uses this to say, before
the first timer run, which configured output a timer run could not write.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from .errors import CommandError
from .fsutil import writable_or_creatable
from .runner import Runner

HOMES = ("/root/", "/home/", "/run/user/")
"""Where the shipped server units see nothing (``ProtectHome=yes``): a key or file the
server needs cannot be there."""


MADE_BY_SYSTEMD = "~"
"""Marks an entry of :func:`unit_writable_paths` that systemd makes when the unit starts
(``CacheDirectory=`` and its kin): writable by the unit whether it exists yet or not."""
_MADE = {
    "CacheDirectory": "/var/cache",
    "StateDirectory": "/var/lib",
    "LogsDirectory": "/var/log",
    "RuntimeDirectory": "/run",
}


def unit_writable_paths(unit: str) -> list[str] | None:
    """The unit's ``ReadWritePaths=`` entries (``-`` marks one that may be missing) and the
    directories systemd makes for it (``CacheDirectory=`` and its kin, marked
    MADE_BY_SYSTEMD), or None when systemd is not running here or does not know the
    unit."""
    if shutil.which("systemctl") is None or not os.path.isdir("/run/systemd/system"):
        return None
    try:
        result = Runner().run(
            ["systemctl", "show", f"--property=ReadWritePaths,LoadState,{','.join(_MADE)}", unit],
            timeout=10,
            level=logging.DEBUG,
        )
    except CommandError:
        return None
    found = dict(line.split("=", 1) for line in result.tail if "=" in line)
    if found.get("LoadState") != "loaded":
        return None
    made = [
        f"{MADE_BY_SYSTEMD}{root}/{name}"
        for key, root in _MADE.items()
        for name in found.get(key, "").split()
    ]
    return made + found.get("ReadWritePaths", "").split()  # first: they need not exist yet


def _allowing(path: Path, allowed: list[str]) -> str | None:
    """The entry of ``allowed`` whose directory ``path`` is below, or None."""
    for entry in allowed:
        if path.is_relative_to(Path(entry.lstrip("-+" + MADE_BY_SYSTEMD))):
            return entry
    return None


def repository_problem(path: Path, allowed: dict[str, list[str] | None]) -> str | None:
    """Why the units (``allowed``: each unit's :func:`unit_writable_paths`, None for one
    not checked) cannot write the local repository ``path``, with the drop-in that fixes
    it; None when they can."""
    if str(path).startswith(HOMES):
        return f"{path} is in a home directory, which the units hide (ProtectHome=yes)"
    barred = [
        unit for unit, paths in allowed.items() if paths is not None and not _allowing(path, paths)
    ]
    if not barred:
        return None
    return (
        f"{path} is outside the ReadWritePaths= of {' and '.join(barred)}, so their timer "
        f"runs cannot write it (runs by hand can): for each, systemctl edit UNIT and add "
        f"[Service] ReadWritePaths={path.parent}"
    )


def output_problem(setting: str, path: Path, unit: str, allowed: list[str] | None) -> str | None:
    """Why a configured output file (``metrics_file``, ``status_page``) cannot be written
    by this command or by ``unit``'s timer runs, with the fix; None when it can.
    ``allowed`` is :func:`unit_writable_paths` of the unit (None: not checked)."""
    directory = path.parent
    if not writable_or_creatable(directory) or (directory.exists() and not directory.is_dir()):
        return f"{setting}: {directory} is not writable"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{setting}: {path} is not writable"
    if allowed is None:
        return None
    entry = _allowing(path, allowed)
    if entry is not None and not entry.startswith(MADE_BY_SYSTEMD):
        granted = Path(entry.lstrip("-+"))
        if not granted.is_dir():
            return (
                f"{setting}: {unit} may write below {granted} only once it exists: "
                f"mkdir -p {granted}"
            )
    if entry is None:
        below = allowed[0].lstrip("-+" + MADE_BY_SYSTEMD)
        return (
            f"{setting}: {path} is outside the ReadWritePaths= of {unit}, so its timer runs "
            f"cannot write it (runs by hand can): choose a path below {below}, "
            f"or allow it: systemctl edit {unit} and add [Service] ReadWritePaths={directory}"
        )
    return None
