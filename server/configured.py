"""``pullback-server configured``: whether a run has anything to do (systemd's
``ExecCondition`` skips it quietly when not), and, when every host is disabled, the
record of that in status.json, the metrics file and the status page, as a pull would
write them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..common.errors import EXIT_OK, ConfigError, PullbackError
from .config import ServerConfig, load_server_config
from .outputs import publish, record_problems
from .status_file import STATUS_FILE, record_configured
from .status_file import configured as listed


def command(path: Path, args: argparse.Namespace) -> int:
    """``pullback-server configured``: 1 when the configuration is valid and lists no
    enabled host, or with ``--copy`` has no ``copy:`` section (systemd's ExecCondition
    then skips the run quietly), else 0: a broken
    configuration must not be skipped silently, the run itself reports it."""
    try:
        config = load_server_config(path)
    except ConfigError:
        return EXIT_OK
    if not any(h.enabled for h in config.hosts):
        if config.hosts:
            _record_configured(config)
            print(f"every host in {config.path} is disabled (enabled: false): nothing to pull")
        else:
            print(f"no host listed in {config.path}: nothing to pull yet")
        return 1
    if getattr(args, "copy", False) and config.backend.copy is None:
        print(f"no copy: section in {config.path}: nothing to copy")
        return 1
    return EXIT_OK


def _record_configured(config: ServerConfig) -> None:
    """Record in status.json that every host is disabled, as a pull would (none runs
    now: :func:`~.status_file.record_configured`), and write the metrics file and the
    status page again, as the hourly pull did (their timestamp went stale, and an alert
    on it fired for ever; they said the hosts were enabled); what cannot be recorded is
    said and skips the run all the same (a user who may not read status.json: nothing)."""
    try:
        record_configured(config.state_dir, listed(config.hosts))
    except PermissionError:
        return
    except (OSError, PullbackError) as exc:
        print(f"{config.state_dir}: could not record the disabled hosts: {exc}", file=sys.stderr)
        return
    if not (config.state_dir / STATUS_FILE).is_file():
        return  # (a server that never pulled: nothing to show, no state directory made)
    status, unwritten = publish(config)
    if unwritten or "outputs" in status:  # (status.json not written again for nothing)
        record_problems(config, unwritten)
