"""A Debian 12 root booted with systemd as PID 1, for testing the packages for real.

The root is made once with debootstrap and cached (``/var/cache/pullback-test``); each
test module gets a fresh copy. systemd runs in private PID and mount namespaces:
``unshare --pid --fork --mount --propagation private``, the root bind-mounted onto itself
(so hardened units can build their mount namespaces), chroot, proc/sys/run mounted, then
``exec /lib/systemd/systemd --system``. Commands enter with ``nsenter``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("PULLBACK_TEST_CACHE", "/var/cache/pullback-test"))
MIRROR = os.environ.get("PULLBACK_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
BASE_PACKAGES = "systemd,systemd-sysv,dbus,ca-certificates"
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}


class Unavailable(Exception):
    """The root cannot be made here (not root, no debootstrap, Debian unreachable)."""


def base_root() -> Path:
    """The cached pristine root, made with debootstrap the first time (under a lock: the
    system tier's modules may run side by side, in pytest-xdist workers)."""
    base = CACHE / f"{SUITE}-base"
    if (base / ".complete").exists():
        return base
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _make_base(base)


def _make_base(base: Path) -> Path:
    if (base / ".complete").exists():
        return base
    if shutil.which("debootstrap") is None:
        raise Unavailable("debootstrap is not installed (apt install debootstrap)")
    shutil.rmtree(base, ignore_errors=True)
    result = subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={BASE_PACKAGES}",
            SUITE,
            str(base),
            MIRROR,
        ],
        capture_output=True,
        text=True,
        env=CLEAN_ENV,
    )
    if result.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise Unavailable(f"debootstrap of {SUITE} from {MIRROR} failed: {' | '.join(tail)}")
    # no getty on a console that does not exist; keep the journal in memory
    for unit in ("getty.target", "serial-getty@ttyS0.service", "console-getty.service"):
        (base / "etc/systemd/system" / unit).unlink(missing_ok=True)
        (base / "etc/systemd/system" / unit).symlink_to("/dev/null")
    (base / ".complete").write_text("ok\n")
    return base


@dataclass
class BootedRoot:
    path: Path
    unshare: subprocess.Popen
    pid: int

    @classmethod
    def boot(cls, path: Path, timeout: float = 60) -> BootedRoot:
        """Boot the root at ``path``: returns once systemd says it is running (or degraded);
        raises RuntimeError when it does not within ``timeout`` seconds."""
        inner = (
            "mount -t proc proc /proc; mount -t sysfs sys /sys; "
            "mount -t tmpfs tmpfs /run; exec /lib/systemd/systemd --system"
        )
        outer = (
            f"mount --bind {path} {path} && exec chroot {path} "
            f"env container=pullback-test sh -c '{inner}'"
        )
        proc = subprocess.Popen(
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                outer,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=CLEAN_ENV,
        )
        deadline = time.monotonic() + timeout
        pid = None
        while time.monotonic() < deadline and pid is None:
            children = subprocess.run(
                ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
            ).stdout.split()
            for child in children:
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    pid = int(child)
            time.sleep(0.1)
        if pid is None:
            proc.kill()
            raise RuntimeError("systemd did not start in the root")
        root = cls(path, proc, pid)
        while time.monotonic() < deadline:
            state = root.run(["systemctl", "is-system-running"], check=False).stdout.strip()
            if state in ("running", "degraded"):
                return root
            time.sleep(0.3)
        # (killed: a root left running would hold port 22 and the next root's units)
        os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=60)
        raise RuntimeError(f"the root did not finish booting: {state}")

    def run(
        self, argv: list[str] | str, check: bool = True, timeout: float = 900, **kwargs
    ) -> subprocess.CompletedProcess:
        """Run a command inside the booted root (argv list, or a shell line)."""
        if isinstance(argv, str):
            argv = ["sh", "-c", argv]
        full = [
            "nsenter",
            "-t",
            str(self.pid),
            "-m",
            "-p",
            "-r",
            "-w",
            "env",
            "-i",
            *(f"{k}={v}" for k, v in CLEAN_ENV.items()),
            *argv,
        ]
        result = subprocess.run(full, capture_output=True, text=True, timeout=timeout, **kwargs)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{argv} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        target = self.path / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def power_cut(self, while_off: Callable[[], None] | None = None, timeout: float = 60) -> None:
        """Cut the root's power and boot it again: systemd (its PID 1) and every process
        of the root killed at once, no unit stopped; ``while_off`` called before the root
        boots as :meth:`boot` does. What was written to files stays. The kernel is the
        machine's: its boot id does not change (``while_off`` may make a file say it did)."""
        os.kill(self.pid, signal.SIGKILL)
        self.unshare.wait(timeout=60)
        if while_off is not None:
            while_off()
        booted = BootedRoot.boot(self.path, timeout)
        self.unshare, self.pid = booted.unshare, booted.pid

    def poweroff(self) -> None:
        self.run(["systemctl", "poweroff"], check=False, timeout=30)
        try:
            self.unshare.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.unshare.kill()
            self.unshare.wait()


def fresh_copy(target: Path) -> Path:
    """A copy of the cached base root at ``target`` (cp -a keeps devices and owners)."""
    base = base_root()
    subprocess.run(["cp", "-a", f"{base}/.", str(target)], check=True)
    return target
