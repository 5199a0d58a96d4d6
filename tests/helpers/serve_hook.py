"""A client's forced command that runs the client's own ``run --full`` once, just before
it answers ``send <name>`` (as an outside tester timed it), whether the server asks
request by request or over one ``session`` (whose lines it passes on to the real serve).

``python serve_hook.py NAME FLAG CLIENT_CONFIG``: FLAG is created when the run happened.
Used by tests/integration/test_incremental_pulls.py.
"""

from __future__ import annotations

import os
import subprocess
import sys


def main() -> int:
    name, flag, config = sys.argv[1:4]
    client = [sys.executable, "-m", "pullback.client.cli", "--config", config]

    def hook(request: str) -> None:
        if request.startswith(f"send {name} ") and not os.path.exists(flag):
            open(flag, "w").close()
            subprocess.run([*client, "run", "--full"], capture_output=True, check=False)

    request = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    if request != "session":
        hook(request)
        os.execv(sys.executable, [*client, "serve"])
    # the real session answers on our standard output; its requests pass through here
    child = subprocess.Popen([*client, "serve"], stdin=subprocess.PIPE)
    assert child.stdin is not None
    for line in sys.stdin.buffer:
        hook(line.decode("ascii", "replace"))
        child.stdin.write(line)
        child.stdin.flush()
    child.stdin.close()
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
