"""A compose application and stand-ins that can hang or fail one call: for attacks on
what a client run stops and starts (tests/integration/test_attacks_h102.py, _h103.py,
_h105.py).

``docker`` and ``systemctl`` are the recording stand-ins of tests/standins/standin.py
(the ``standins`` fixture); the wrappers written here go first on PATH.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.helpers.client import ClientSandbox

WRAPPER = """\
#!/bin/sh
# hangs (after touching $HANG_MARK) on the call whose arguments are $HANG_ON; fails the
# one whose arguments are $FAIL_ON (after the stand-in recorded it); sends SIGTERM to
# its caller on $TERM_ON (systemd stopping the unit meanwhile); else the stand-in
if [ -n "$HANG_ON" ] && [ "$*" = "$HANG_ON" ]; then touch "$HANG_MARK"; exec sleep 60; fi
if [ -n "$TERM_ON" ] && [ "$*" = "$TERM_ON" ]; then kill -TERM "$PPID"; sleep 0.5; fi
if [ -n "$FAIL_ON" ] && [ "$*" = "$FAIL_ON" ]; then
    "$STANDIN_DIR/$(basename "$0")" "$@"
    echo "Job for $2 failed because the control process exited with error code." >&2
    exit 1
fi
exec "$STANDIN_DIR/$(basename "$0")" "$@"
"""


def compose_app(tmp_path: Path) -> Path:
    """A compose file of two services, web and db, in ``tmp_path/app``; returns it."""
    compose = tmp_path / "app" / "docker-compose.yml"
    compose.parent.mkdir()
    compose.write_text("services:\n  web: {image: nginx:1.25}\n  db: {image: postgres:15}\n")
    return compose


def wrapped_env(tmp_path: Path, standins_env: dict, marker: Path) -> dict:
    """The environment that puts the wrappers (in ``tmp_path/wrap``) before the
    ``standins`` fixture's stand-ins (in ``tmp_path/bin``); a hung call touches
    ``marker``. Set ``HANG_ON``, ``FAIL_ON`` or ``TERM_ON`` to a call's arguments."""
    wrappers = tmp_path / "wrap"
    wrappers.mkdir()
    for name in ("docker", "systemctl"):
        (wrappers / name).write_text(WRAPPER)
        (wrappers / name).chmod(0o755)
    return {
        **standins_env,
        "PATH": f"{wrappers}:{standins_env['PATH']}",
        "STANDIN_DIR": str(tmp_path / "bin"),
        "HANG_MARK": str(marker),
    }


def kill_when_marked(box: ClientSandbox, marker: Path, *args: str, env: dict) -> None:
    """Start ``pullback-client ARGS`` in ``box`` and SIGKILL it once ``marker`` appears
    (a dump or a hung call touched it: the prepares done); the marker is removed."""
    proc = box.popen(*args, env={**os.environ, **env})
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "never reached the marker"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    marker.unlink()
