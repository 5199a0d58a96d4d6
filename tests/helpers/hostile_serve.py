"""A malicious serve endpoint: the forced command of a hostile client's sshd.

``python hostile_serve.py MODE CLIENT_CONFIG``: sshd hands it the server's request in
``SSH_ORIGINAL_COMMAND``. Requests the mode does not attack are answered by the real
``pullback-client serve`` (so the archive and listing are genuine); the attacked one
misbehaves as the mode says. Used by tests/integration/test_hostile_clients.py.

A ``session`` (protocol 4) is refused as an older client refuses it, so that every attack
meets the server request by request whatever the server remembers of the client; the
bounds of a session's own answers are attacked in tests/unit/test_remote_stream.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import time


def real(config: str) -> bytes:
    """What the real serve answers to this request."""
    argv = [sys.executable, "-m", "pullback.client.cli", "--config", config, "serve"]
    return subprocess.run(argv, capture_output=True, check=False).stdout


def trickle(prefix: bytes) -> None:
    """A byte every half second, for ever: never idle long, never done."""
    out = sys.stdout.buffer
    for byte in prefix:
        out.write(bytes([byte]))
        out.flush()
        time.sleep(0.5)
    while True:
        out.write(b" ")
        out.flush()
        time.sleep(0.5)


FORGED = "\n[good] stored everything\x1b[2J\r"
"""Words that would forge a line (and clear a terminal) if printed as they are."""


def listing(config: str, change) -> None:
    """Answer ``list`` with the real listing, changed by ``change(data)``."""
    data = json.loads(real(config))
    change(data)
    sys.stdout.write(json.dumps(data) + "\n")


def junk(data: dict) -> None:
    data["unusable"] = [{"name": f"junk{i}{FORGED}", "problem": FORGED * 20} for i in range(1500)]


def fat_list(config: str) -> None:
    """The real listing with a key of empty objects up to just below what the server
    reads (2 MiB): decoding it is the most memory a legal answer can cost."""
    body = json.dumps(json.loads(real(config)))[:-1].encode() + b', "junk": ['
    room = (2 << 20) - len(body) - 16
    sys.stdout.buffer.write(body + b"{}," * (room // 3) + b"{}]}\n")


def forged_host(data: dict) -> None:
    data["host"] = "evil" + FORGED


def _fake_deltas(data: dict, count: int, oldest_base: dict | None) -> None:
    """Add ``count`` deltas newer than the real archive, each built on the one before
    (the oldest on ``oldest_base``, or on the real archive): sidecars that pass every
    check, archives that are never there."""
    real_entry = data["archives"][-1]
    real_side = real_entry["sidecar"]
    stamp = dt.datetime.strptime(real_side["stamp"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    base = oldest_base or {
        "name": real_side["archive"]["name"],
        "manifest_sha256": real_side["archive"].get("manifest_sha256", "0" * 64),
    }
    for number in range(1, count + 1):
        when = stamp + dt.timedelta(seconds=number)
        side = json.loads(json.dumps(real_side))
        side["format"] = 2
        side["stamp"] = when.strftime("%Y%m%dT%H%M%SZ")
        name = f"{side['host']}-{side['stamp']}.tar.zst"
        manifest = hashlib.sha256(name.encode()).hexdigest()
        side["archive"].update(name=name, kind="delta", base=base, manifest_sha256=manifest)
        data["archives"].append({"name": name, "size": side["archive"]["size"], "sidecar": side})
        base = {"name": name, "manifest_sha256": manifest}


def long_chain(data: dict) -> None:
    _fake_deltas(data, 150, None)


def missing_base(data: dict) -> None:
    _fake_deltas(data, 1, {"name": "evil-20000101T000000Z.tar.zst", "manifest_sha256": "1" * 64})


def huge(data: dict) -> None:
    for entry in data["archives"]:
        entry["size"] = entry["sidecar"]["archive"]["size"] = 10 << 40


def main() -> None:
    mode, config = sys.argv[1], sys.argv[2]
    request = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    verb = request.split(" ", 1)[0]
    changes = {
        "junk-list": junk,
        "forged-host": forged_host,
        "huge-archive": huge,
        "delta-long-chain": long_chain,
        "delta-missing-base": missing_base,
    }
    if verb == "session":
        sys.stderr.write(f"refused request {request!r}: unknown request\n")
        sys.exit(2)
    if mode in changes and verb == "list":
        listing(config, changes[mode])
    elif mode == "fat-list" and verb == "list":
        fat_list(config)
    elif mode == "short-send" and verb == "send":
        name, offset = request.split(" ")[1:]
        size = os.path.getsize(os.path.join(os.path.dirname(config), "archives", name))
        with open(os.path.join(os.path.dirname(config), "archives", name), "rb") as handle:
            handle.seek(int(offset))
            sys.stdout.buffer.write(handle.read(max(0, size - 1 - int(offset))))
    elif mode == "refuse-fetched" and verb == "fetched":
        sys.stderr.write(("refused" + FORGED) * 1000 + "\n")
        sys.exit(2)
    elif mode == "trickle-list" and verb == "list":
        trickle(b'{"host": "')
    elif mode == "trickle-fetched" and verb == "fetched":
        trickle(b'{"ok": ')
    elif mode == "no-exit-status" and verb == "list":
        sys.stdout.buffer.write(real(config))
        sys.stdout.buffer.flush()
        os.close(1)  # the answer is complete, but the command never ends
        time.sleep(60)  # longer than any test waits; then gone
    elif mode == "stderr-flood" and verb == "list":
        line = b"\x1b[2J[web2] stored everything " * 100 + b"\n"
        while True:
            sys.stderr.buffer.write(line)
    else:
        os.execv(
            sys.executable,
            [sys.executable, "-m", "pullback.client.cli", "--config", config, "serve"],
        )


if __name__ == "__main__":
    main()
