"""Where the shipped systemd units let pullback write, as systemd has loaded them.

The units run with ``ProtectSystem=strict``: everything outside their
``ReadWritePaths=`` (drop-ins included) is read-only to a timer run, even for root,
while the same command run by hand writes anywhere. ``check`` uses this to say, before
the first timer run, which configured output a timer run could not write.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

from . import yamlfile
from .errors import CommandError
from .fsutil import writable_or_creatable
from .runner import Runner

HOMES = ("/root/", "/home/", "/run/user/")
"""Where the shipped server units see nothing (``ProtectHome=yes``): a key or file the
server needs cannot be there."""


PRIVATE_TMPS = ("/tmp", "/var/tmp")
"""What the shipped units get a private copy of (``PrivateTmp=yes``): systemd throws it
away when the run ends, so an output written there is read by nobody."""


def private_tmp(path: Path) -> str | None:
    """The private /tmp or /var/tmp of this process's unit that ``path`` lies below
    (systemd mounts ``.../systemd-private-<id>-<unit>-<x>/tmp`` there: seen in
    /proc/self/mountinfo), or None."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as info:
            mounts = [line.split()[3:5] for line in info if len(line.split()) > 4]
    except OSError:
        return None
    real = Path(os.path.realpath(path))  # a symlink to /tmp, or /tmp/../var: where it lands
    for root, point in mounts:
        if point in PRIVATE_TMPS and "/systemd-private-" in root and real.is_relative_to(point):
            return point
    return None


def lasting_output(path: Path) -> None:
    """Refuse an output that a private /tmp would swallow (:func:`private_tmp`).
    Raises OSError saying so."""
    where = private_tmp(path)
    if where is not None:
        raise OSError(
            errno.EROFS,
            f"{where} is this unit's own (PrivateTmp=yes), thrown away when the run ends: "
            "choose another directory",
        )


MADE_BY_SYSTEMD = "~"
"""Marks an entry of :func:`unit_writable_paths` that systemd makes when the unit starts
(``CacheDirectory=`` and its kin): writable by the unit whether it exists yet or not."""
_MADE = {
    "CacheDirectory": "/var/cache",
    "StateDirectory": "/var/lib",
    "LogsDirectory": "/var/log",
    "RuntimeDirectory": "/run",
}
_PROPERTIES = ("ReadWritePaths", "LoadState", "PrivateTmp", *_MADE)
PRIVATE = "!"
"""Marks an entry of :func:`unit_writable_paths` that is the unit's own private /tmp or
/var/tmp (``PrivateTmp=yes``): writable, and thrown away when the run ends."""


def unit_writable_paths(unit: str) -> list[str] | None:
    """The unit's ``ReadWritePaths=`` entries (``-`` marks one that may be missing), the
    directories systemd makes for it (``CacheDirectory=`` and its kin, marked
    MADE_BY_SYSTEMD) and its private /tmp and /var/tmp (marked PRIVATE), or None when
    systemd is not running here or does not know the unit."""
    if shutil.which("systemctl") is None or not os.path.isdir("/run/systemd/system"):
        return None
    try:
        result = Runner().run(
            ["systemctl", "show", f"--property={','.join(_PROPERTIES)}", unit],
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
    private = [f"{PRIVATE}{tmp}" for tmp in PRIVATE_TMPS if found.get("PrivateTmp") == "yes"]
    return made + found.get("ReadWritePaths", "").split() + private  # made: need not exist


def _private(path: Path, allowed: list[str]) -> str | None:
    """The unit's private /tmp or /var/tmp (an entry marked PRIVATE) ``path`` is in."""
    for entry in allowed:
        if entry.startswith(PRIVATE) and path.is_relative_to(entry[1:]):
            return entry[1:]
    return None


def _allowing(path: Path, allowed: list[str]) -> str | None:
    """The entry of ``allowed`` whose directory ``path`` is below, or None."""
    for entry in allowed:
        if not entry.startswith(PRIVATE) and path.is_relative_to(
            Path(entry.lstrip("-+" + MADE_BY_SYSTEMD))
        ):
            return entry
    return None


def repository_problem(path: Path, allowed: dict[str, list[str] | None]) -> str | None:
    """Why the units (``allowed``: each unit's :func:`unit_writable_paths`, None for one
    not checked) cannot write the local repository ``path``, with the drop-in that fixes
    it; None when they can."""
    if str(path).startswith(HOMES):
        return f"{path} is in a home directory, which the units hide (ProtectHome=yes)"
    private = [u for u, paths in allowed.items() if paths is not None and _private(path, paths)]
    if private:
        return (
            f"{path} is in the private /tmp of {' and '.join(private)} (PrivateTmp=yes), "
            "thrown away when each run ends: choose a directory that lasts"
        )
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


CLIENT_CONFIG = Path("/etc/pullback/client.yaml")
SERVER_CONFIG = Path("/etc/pullback/server.yaml")
"""Where each side's configuration is on a machine that runs both."""


def shared_metrics_file(path: Path, other: Path) -> str | None:
    """Why this side's ``metrics_file`` ``path`` cannot be the one the other side's
    configuration ``other`` names (a machine that is client and server: each run
    rewrites the file and the other side's gauges vanish), or None (also when ``other``
    is missing or cannot be read: its own check says so)."""
    try:
        theirs = yamlfile.load(other).data
    except (yamlfile.YamlFileError, OSError):
        return None
    named = theirs.get("metrics_file") if isinstance(theirs, dict) else None
    if not isinstance(named, str) or os.path.realpath(named) != os.path.realpath(path):
        return None
    return (
        f"metrics_file: {path} is also the metrics_file of {other}: each side's runs "
        "rewrite it and the other's gauges vanish; give each its own file "
        "(e.g. pullback.prom and pullback-client.prom)"
    )


SUGGESTED = {"metrics_file": "node-exporter", "status_page": "www"}
"""The kind of unit-writable directory to suggest for an output (node_exporter reads
the one, a web server the other: not /var/lib/pullback, which they may not read)."""


def _suggested(setting: str, allowed: list[str]) -> str:
    """The unit-writable directory to name for ``setting``: one of its kind, else the
    first (a directory systemd makes, or the first ReadWritePaths= entry)."""
    usable = [e.lstrip("-+" + MADE_BY_SYSTEMD) for e in allowed if not e.startswith(PRIVATE)]
    fitting = [e for e in usable if SUGGESTED.get(setting, "\0") in e]
    return (fitting or usable or ["/var/lib/pullback"])[0]


def output_problem(setting: str, path: Path, unit: str, allowed: list[str] | None) -> str | None:
    """Why a configured output file (``metrics_file``, ``status_page``) cannot be written
    by this command or by ``unit``'s timer runs, with the fix; None when it can.
    ``allowed`` is :func:`unit_writable_paths` of the unit (None: not checked). Judged
    where the path lands (symlinks resolved), said as written."""
    shown, path = path, Path(os.path.realpath(path))
    directory = path.parent
    if not writable_or_creatable(directory) or (directory.exists() and not directory.is_dir()):
        return f"{setting}: {directory} is not writable"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{setting}: {path} is not writable"
    if allowed is None:
        return None
    below = _suggested(setting, allowed)
    said = str(shown) if shown == path else f"{shown} (which is {path})"
    tmp = _private(path, allowed)
    if tmp is not None:
        return (
            f"{setting}: {said} is in {unit}'s own {tmp} (PrivateTmp=yes), thrown away "
            f"when each run ends: choose a path below {below}"
        )
    entry = _allowing(path, allowed)
    if entry is not None and not entry.startswith(MADE_BY_SYSTEMD):
        granted = Path(entry.lstrip("-+"))
        if not granted.is_dir():
            return (
                f"{setting}: {unit} may write below {granted} only once it exists: "
                f"mkdir -p {granted}"
            )
    if entry is None:
        return (
            f"{setting}: {said} is outside the ReadWritePaths= of {unit}, so its timer runs "
            f"cannot write it (runs by hand can): choose a path below {below}, "
            f"or allow it: systemctl edit {unit} and add [Service] ReadWritePaths={directory}"
        )
    return None
