"""client.yaml: the settings of pullback-client."""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import socket
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from ..common.config import load_validated
from ..common.errors import EXIT_OK, ConfigError
from ..common.locks import FileLock
from ..common.mail import EmailConfig, email_config
from ..common.notify import NotifyConfig, notify_config
from ..common.schema import load_schema
from ..common.units import parse_duration, parse_size

DEFAULT_PATH = Path("/etc/pullback/client.yaml")


class IncrementalMode(StrEnum):
    """``incremental.enabled``: ``true``, ``false`` or ``auto``."""

    ON = "on"
    """Deltas between full archives (the server is known to apply them)."""
    OFF = "off"
    """Full archives only, kept by ``keep_last``, ``keep_days`` and ``fetched_keep``."""
    AUTO = "auto"
    """As OFF until a server has said it applies deltas (``fetched <archive> deltas``),
    then as ON. The file cache is kept all along, so the first delta comes the run after."""

    @classmethod
    def of(cls, value: bool | str) -> IncrementalMode:
        if value == "auto":
            return cls.AUTO
        return cls.ON if value is True else cls.OFF


@dataclass(frozen=True)
class IncrementalConfig:
    """``incremental:`` of client.yaml (defaults in the schema)."""

    mode: IncrementalMode = IncrementalMode.AUTO
    full_every: float = 7 * 86400.0
    full_ratio: float = 0.5
    cache_dir: Path = Path("/var/cache/pullback")


INSTANCE_LOCK = "client.lock"
"""The client's lock (in ``lock_dir``): a run, a restore, or the start of what a killed
run left stopped holds it, one at a time."""


@dataclass(frozen=True)
class ClientConfig:
    """Validated client settings. Every default lives in ``schemas/client.yaml``."""

    path: Path
    hostname: str
    archive_dir: Path
    work_dir: Path
    lock_dir: Path
    service_dirs: tuple[Path, ...]
    plugin_dirs: tuple[Path, ...]
    compression: str
    compression_level: int | None
    keep_last: int
    keep_days: int
    min_free_space: int
    verify: str
    fetched_keep: int
    min_interval: float
    email: EmailConfig | None
    notify: NotifyConfig | None
    metrics_file: Path | None
    incremental: IncrementalConfig = field(default_factory=lambda: IncrementalConfig())
    run_timeout: float = 12 * 3600.0
    """Seconds a run may take before it is stopped (0: no limit)."""
    max_holes_and_links: int | None = None
    """Bytes of sparse files' holes and further hard-link names an archive may hold
    (the schema's default; None: no bound)."""

    def instance_lock(self, purpose: str) -> FileLock:
        """The client's lock (INSTANCE_LOCK), not yet taken; ``purpose`` is what its owner
        record says the holder is (``pullback-client run``)."""
        return FileLock(self.lock_dir / INSTANCE_LOCK, purpose=purpose)

    @property
    def archive_suffix(self) -> str:
        return {"zstd": ".tar.zst", "gzip": ".tar.gz", "none": ".tar"}[self.compression]


def default_hostname() -> str:
    """The machine's short host name (``hostname -s``: up to the first dot), the name
    every example of server.yaml uses; ``hostname:`` in client.yaml overrides it."""
    return socket.gethostname().split(".")[0] or "localhost"


def configured(path: Path, args: argparse.Namespace) -> int:
    """``pullback-client configured``: 1 when the configuration is valid and names no
    service (systemd's ExecCondition then skips the run quietly), else 0: a broken
    configuration must not make systemd skip the run silently; the run reports it."""
    from .services import find_service_files

    try:
        config = load_client_config(path)
    except ConfigError:
        return EXIT_OK
    if find_service_files(config.service_dirs):
        return EXIT_OK
    print(
        f"no service configured in {', '.join(map(str, config.service_dirs))}: "
        "nothing to back up yet"
    )
    return 1


def load_client_config(path: str | os.PathLike = DEFAULT_PATH) -> ClientConfig:
    """Read and validate client.yaml. Raises ConfigError naming file, line and key."""
    doc = load_validated(path, load_schema("pullback.common", "client"), allow_empty=True)
    data = doc.data
    level = data.get("compression_level")
    if data["compression"] == "gzip" and level is not None and level > 9:
        raise ConfigError(
            [doc.problem(("compression_level",), f"gzip levels are 1-9, got {level}")]
        )
    shared = _cache_dir_shared(data, Path(path))
    if shared:
        raise ConfigError([doc.problem(("incremental", "cache_dir"), shared)])
    return ClientConfig(
        path=Path(path),
        hostname=data.get("hostname") or default_hostname(),
        archive_dir=Path(data["archive_dir"]),
        work_dir=Path(data["work_dir"]),
        lock_dir=Path(data["lock_dir"]),
        service_dirs=tuple(Path(p) for p in data["service_dirs"]),
        plugin_dirs=tuple(Path(p) for p in data["plugin_dirs"]),
        compression=data["compression"],
        compression_level=data.get("compression_level"),
        keep_last=data["keep_last"],
        keep_days=data["keep_days"],
        min_free_space=parse_size(data["min_free_space"]),
        max_holes_and_links=parse_size(data["max_holes_and_links"]) or None,
        verify=data["verify"],
        fetched_keep=data["fetched_keep"],
        min_interval=parse_duration(data["min_interval"]),
        email=email_config(data.get("email")),
        notify=notify_config(data.get("notify")),
        metrics_file=Path(data["metrics_file"]) if data.get("metrics_file") else None,
        incremental=_incremental(data["incremental"]),
        run_timeout=parse_duration(data["run_timeout"]),
    )


SERVE_USER = "pullback"
"""The user the serve endpoint runs as (the packages make it; its home holds its
``.ssh/authorized_keys``)."""


def _cache_dir_shared(data: dict, config_path: Path) -> str | None:
    """Why ``incremental.cache_dir`` cannot be the file cache's: it is, or holds, a
    directory of the client's own or of the serve user's, or lies in the work or the
    archive directory; None when it is a directory of its own. Every run makes the
    cache's directory root's alone (mode 0700) and a run removes what it finds in the
    work directory (helper-163 F1: the archive directory lost its set-group-id bit and
    the serve endpoint could no longer read it; the serve user's home shut sshd out;
    a cache in the work directory was removed by every run, every archive full)."""
    cache = Path(os.path.realpath(data["incremental"]["cache_dir"]))
    places = {
        "archive_dir": data["archive_dir"],
        "work_dir": data["work_dir"],
        "lock_dir": data["lock_dir"],
        "the configuration's directory": os.path.dirname(os.path.abspath(config_path)),
    }
    for key in ("service_dirs", "plugin_dirs"):
        places.update({f"an entry of {key}": d for d in data[key]})
    if data.get("metrics_file"):
        places["the metrics file's directory"] = os.path.dirname(data["metrics_file"])
    with contextlib.suppress(KeyError):
        places[f"the home of the {SERVE_USER} user"] = pwd.getpwnam(SERVE_USER).pw_dir
    for what, place in places.items():
        place = Path(os.path.realpath(place))  # (links resolved: helper-165 F1)
        inside = what in ("archive_dir", "work_dir") and cache.is_relative_to(place)
        if place.is_relative_to(cache) or inside:
            relation = (
                "is" if place == cache else "holds" if place.is_relative_to(cache) else "is in"
            )
            why = (
                "every run empties the work directory"
                if what == "work_dir" and relation != "holds"
                else "each run makes the cache's directory root's alone (mode 0700)"
            )
            return (
                f"{cache} {relation} {what} ({place}): {why}; give the cache a directory "
                "of its own, such as /var/cache/pullback"
            )
    return None


def _incremental(data: dict) -> IncrementalConfig:
    return IncrementalConfig(
        mode=IncrementalMode.of(data["enabled"]),
        full_every=parse_duration(data["full_every"]),
        full_ratio=float(data["full_ratio"]),
        cache_dir=Path(data["cache_dir"]),
    )
