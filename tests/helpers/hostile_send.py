"""More hostile serve endpoints (outside review h91): attacks on ``send``, the archive's
own bytes, on both the request-by-request path and a protocol-4 ``session``.

``python hostile_send.py MODE CLIENT_CONFIG`` as the forced command of a real sshd.
Requests the mode does not attack are answered by the real ``pullback-client serve``.

Modes (request by request; a ``session`` is refused as an older client refuses it):

- ``trickle-send``: the archive's real bytes, one every half second, for ever;
- ``send-no-exit``: the whole archive, then standard output closed, but the command never
  ends (no exit status);
- ``send-no-exit-closed``: as ``send-no-exit``, standard error closed too (sshd then
  sends the channel's end);
- ``slow-send`` (an honest client on a slow link): the real answer, 4 s late
  (``slow-send-N``: N s late);
- ``send-stderr-flood``: the whole archive, slowly (a chunk every 0.2 s), while standard
  error is flooded with lines as fast as the pipe takes them; then exits 0.

Modes in a session (``session-...``): a real session is answered request by request by
the real serve, framed, except the attacked request:

- ``session-trickle-send``: ``ok <length>`` and then the bytes, one every half second.

``bomb`` (a third argument: a file): the newest archive's bytes are that file's, its
size and sha256 in the listing too (a client makes its own sidecar).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

SERVE = [sys.executable, "-m", "pullback.client.cli", "--config"]


def real(config: str, request: str) -> tuple[int, bytes, bytes]:
    env = {**os.environ, "SSH_ORIGINAL_COMMAND": request}
    done = subprocess.run([*SERVE, config, "serve"], capture_output=True, env=env, check=False)
    return done.returncode, done.stdout, done.stderr


def archive_path(config: str, name: str) -> str:
    return os.path.join(os.path.dirname(config), "archives", name)


def rest_of(config: str, request: str) -> bytes:
    _, name, offset = request.split(" ")
    with open(archive_path(config, name), "rb") as handle:
        handle.seek(int(offset))
        return handle.read()


NO_EXIT_SECONDS = 300


def never_exit() -> None:
    """Sleep :data:`NO_EXIT_SECONDS`, but end with the SSH session that started this
    stand-in (the pull cut the channel, sshd's session process ended): it outlived
    its test by minutes before."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # (the session ended before the line above)
        return
    time.sleep(NO_EXIT_SECONDS)


"""How long a send that "never ends" lives: far past any test's bound (host_timeout 30 s),
then it goes (a test run left them for an hour)."""


def trickle(data: bytes) -> None:
    out = sys.stdout.buffer
    for byte in data:
        out.write(bytes([byte]))
        out.flush()
        time.sleep(0.5)


FLOOD_LINE = b"\x1b[2J[good] stored everything " * 40 + b"\n"


def flood() -> None:
    err = sys.stderr.buffer
    while True:
        err.write(FLOOD_LINE)
        err.flush()


def session(mode: str, config: str) -> None:
    """A session answered by the real serve, request by request, framed; ``send``
    attacked as ``mode`` says."""
    stdin = sys.stdin.buffer
    out = sys.stdout.buffer
    while True:
        line = stdin.readline()
        if not line:
            return
        request = line.decode().strip()
        verb = request.split(" ", 1)[0]
        if verb == "send" and mode == "session-trickle-send":
            data = rest_of(config, request)
            out.write(f"ok {len(data)}\n".encode())
            out.flush()
            trickle(data)
            continue
        code, answer, err = real(config, request)
        if code == 0:
            out.write(f"ok {len(answer)}\n".encode() + answer)
        else:
            words = (err.decode(errors="replace").strip().splitlines() or ["refused"])[-1]
            out.write(f"refused {words[:200]}\n".encode())
        out.flush()


def bomb_listing(config: str, bomb: str) -> None:
    """The real listing, its newest archive's size and sha256 those of ``bomb``."""
    import hashlib
    import json

    _, answer, _ = real(config, "list")
    data = json.loads(answer)
    digest = hashlib.sha256()
    with open(bomb, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    entry = data["archives"][-1]
    entry["size"] = entry["sidecar"]["archive"]["size"] = os.path.getsize(bomb)
    entry["sidecar"]["archive"]["sha256"] = digest.hexdigest()
    sys.stdout.write(json.dumps(data) + "\n")


def main() -> None:
    mode, config = sys.argv[1], sys.argv[2]
    if mode == "bomb":
        bomb = sys.argv[3]
        request = os.environ.get("SSH_ORIGINAL_COMMAND", "")
        verb = request.split(" ", 1)[0]
        if verb == "session":
            sys.stderr.write(f"refused request {request!r}: unknown request\n")
            sys.exit(2)
        if verb == "list":
            bomb_listing(config, bomb)
            return
        if verb == "send":
            offset = int(request.split(" ")[2])
            with open(bomb, "rb") as handle:
                handle.seek(offset)
                while chunk := handle.read(1 << 20):
                    sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            return
        os.execv(sys.executable, [*SERVE, config, "serve"])
    request = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    verb = request.split(" ", 1)[0]
    if verb == "session":
        if mode.startswith("session-"):
            session(mode, config)
            return
        sys.stderr.write(f"refused request {request!r}: unknown request\n")
        sys.exit(2)
    if mode.startswith("slow-send") and verb == "send":  # honest, on a slower link
        time.sleep(float(mode.rpartition("-")[2]) if mode != "slow-send" else 4)
        os.execv(sys.executable, [*SERVE, config, "serve"])
    if mode == "trickle-send" and verb == "send":
        trickle(rest_of(config, request))
    elif mode == "send-no-exit" and verb == "send":
        sys.stdout.buffer.write(rest_of(config, request))
        sys.stdout.buffer.flush()
        os.close(1)  # the archive is whole, but the command never ends
        never_exit()
    elif mode == "send-no-exit-closed" and verb == "send":
        sys.stdout.buffer.write(rest_of(config, request))
        sys.stdout.buffer.flush()
        os.close(1)  # the archive is whole, its output and standard error closed (sshd
        os.close(2)  # sends the end of the channel), but the command never ends
        never_exit()
    elif mode == "send-stderr-flood" and verb == "send":
        threading.Thread(target=flood, daemon=True).start()
        data = rest_of(config, request)
        step = max(1, len(data) // 100)
        for start in range(0, len(data), step):
            sys.stdout.buffer.write(data[start : start + step])
            sys.stdout.buffer.flush()
            time.sleep(0.2)
    else:
        os.execv(sys.executable, [*SERVE, config, "serve"])


if __name__ == "__main__":
    main()
