"""What a plugin's hook may not change for the rest of the client's process: the
environment, the umask and the handlers of the signals pullback stops on.

Hooks run in the client's own process. One that set ``os.environ["PATH"]`` made every
later service's commands fail (an ``os.environ["PGPASSWORD"]`` would reach every later
command); ``os.umask(0)`` made the next service's staged files world-writable in the
archive, and so on the restored system; a SIGTERM handler set to ``SIG_IGN`` made a run
stopped by systemd publish as if nothing happened (an outside plugin author's findings).
:func:`kept` takes them before a hook and puts back what it changed, with a warning.
A hook that needs another environment passes ``env=`` to ``task.run``.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator

from ..common.signals import SignalGuard


def _umask() -> int:
    """This process's umask, read without changing it (Linux's /proc/self/status;
    elsewhere set and set back)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _handlers() -> dict[int, object]:
    return {sig: signal.getsignal(sig) for sig in SignalGuard.SIGNALS}


@contextlib.contextmanager
def kept(warn: Callable[[str], None]) -> Iterator[None]:
    """Run the block (a hook); then put back the environment, the umask and the signal
    handlers it changed, and ``warn`` once naming what was put back."""
    environ, mask, handlers = dict(os.environ), _umask(), _handlers()
    try:
        yield
    finally:
        changed = []
        if os.environ != environ:
            os.environ.clear()
            os.environ.update(environ)
            changed.append("the environment")
        if _umask() != mask:
            os.umask(mask)
            changed.append("the umask")
        now = _handlers()
        moved = [sig for sig, handler in handlers.items() if now[sig] != handler]
        for sig in moved:
            with contextlib.suppress(ValueError, TypeError, OSError):  # (not the main thread)
                signal.signal(sig, handlers[sig])  # type: ignore[arg-type]
        if moved:
            changed.append("the handlers of " + ", ".join(signal.Signals(s).name for s in moved))
        if changed:
            warn(
                f"the plugin changed {' and '.join(changed)} of the client's process; "
                "put back (a hook passes env= to task.run instead)"
            )
