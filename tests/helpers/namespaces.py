"""A Python snippet run in a private mount namespace after a shell ``setup`` (unmount
/proc, bind a directory over /tmp): what a host without /proc or a unit's PrivateTmp=
does, done by hand with real mounts. Needs root; skips the test where this machine
gives no private namespace."""

from __future__ import annotations

import subprocess
import sys

import pytest


def in_mount_namespace(setup: str, script: str) -> subprocess.CompletedProcess:
    """``setup`` (shell), then this interpreter running ``script`` (which must hold no
    single quote), in a private mount namespace. Returns the finished process (text)."""
    shell = f"{setup} && exec {sys.executable} -c '{script}'"
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", shell],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0 and ("unshare failed" in done.stderr or "mount" in done.stderr):
        pytest.skip(f"no private mount namespace here: {done.stderr.strip()[:200]}")
    return done
