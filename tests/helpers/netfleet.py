"""A fleet whose client hosts each live in their own network namespace (root only).

Every host gets a namespace ``pb<tag>h<i>`` holding one end of a veth pair (``eth0``,
address ``10.<net>.<i>/24``) and its own sshd listening there on port 22; the other end
is attached to a bridge in the server's (the test's) namespace, which holds
``10.<net>.1``. Traffic between the server and a host really crosses an interface, so a
host can be:

- made slow: a rate limit on its ``eth0`` (``tc ... netem delay/rate`` where the kernel
  has netem, ``tc ... tbf rate`` otherwise: this machine's kernel ships no sch_netem);
- cut: its veth set down, so packets vanish without a reset, as a pulled cable does;
- hung: its sshd stopped with SIGSTOP (the kernel still accepts the TCP connection,
  nobody ever answers).

Names carry a random tag so that two runs on one machine never collide.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.client import ClientSandbox
from tests.helpers.fleet import Fleet
from tests.helpers.sshd import Sshd, serve_command


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _tc(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run([*prefix, "tc", *args], capture_output=True, text=True, check=check)


def unavailable_reason() -> str | None:
    """Why the netns fleet cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "the netns fleet needs root (ip netns, veth, bridge); run the tests as root"
    if not shutil.which("ip") or not shutil.which("tc"):
        return "the netns fleet needs iproute2 (ip, tc): apt-get install iproute2"
    probe = f"pbprobe{os.getpid() % 10000}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def netem_available() -> bool:
    """Whether the kernel has the netem qdisc (delay, loss); tbf is the fallback."""
    name = f"pbq{os.getpid() % 100000}"
    if _ip("link", "add", name, "type", "dummy", check=False).returncode != 0:
        return False
    try:
        return (
            _tc(
                "qdisc", "add", "dev", name, "root", "netem", "delay", "1ms", check=False
            ).returncode
            == 0
        )
    finally:
        _ip("link", "del", name, check=False)


def _unused_net() -> int:
    """A second octet N whose 10.N.0.0/16 no interface here uses yet: two fleets (the
    fault matrix and the soak, in two pytest-xdist workers) must not share a route."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    free = [n for n in range(100, 250) if f" 10.{n}." not in used]
    return random.choice(free or [random.randrange(100, 250)])


@dataclass
class NetFleet(Fleet):
    """A :class:`Fleet` whose hosts are network namespaces behind a bridge."""

    tag: str = field(default_factory=lambda: f"{random.randrange(16**4):04x}")
    net: int = field(default_factory=lambda: _unused_net())
    namespaces: dict[str, str] = field(default_factory=dict)
    veths: dict[str, str] = field(default_factory=dict)
    netem: bool = False

    def __post_init__(self):
        super().__post_init__()
        self.bridge = f"pb{self.tag}br"
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"10.{self.net}.0.1/16", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        self.netem = netem_available()

    def start_sshd(self, name: str, client: ClientSandbox) -> Sshd:
        index = len(self.namespaces) + 1
        netns, veth = f"pb{self.tag}h{index}", f"pb{self.tag}v{index}"
        address = f"10.{self.net}.{index}.2"
        _ip("netns", "add", netns)
        self.namespaces[name] = netns
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        self.veths[name] = veth
        _ip("link", "set", veth, "master", self.bridge)
        _ip("link", "set", veth, "up")
        _ip("-n", netns, "addr", "add", f"{address}/16", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        return Sshd(
            self.root / "hosts" / name / "sshd",
            Path(f"{self.key}.pub"),
            serve_command(client.config),
            address=address,
            port=22,
            netns=netns,
        ).start()

    # -- faults -----------------------------------------------------------------------------

    def slow(self, name: str, rate: str = "2mbit", delay: str = "50ms") -> None:
        """Limit what the host sends (the archive's direction) to ``rate``."""
        netns = self.namespaces[name]
        if self.netem:
            _tc(
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                "netem",
                "delay",
                delay,
                "rate",
                rate,
                netns=netns,
            )
        else:
            _tc(
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                "16kb",
                "latency",
                "2s",
                netns=netns,
            )

    def unslow(self, name: str) -> None:
        _tc("qdisc", "del", "dev", "eth0", "root", netns=self.namespaces[name], check=False)

    def cut(self, name: str) -> None:
        """Pull the cable: the host's link goes down, packets vanish without a reset."""
        _ip("link", "set", self.veths[name], "down")

    def reconnect(self, name: str) -> None:
        _ip("link", "set", self.veths[name], "up")

    def hang(self, name: str) -> None:
        """The host stops answering: its sshd (listener and sessions) is stopped."""
        self.hosts[name].sshd.pause()

    def unhang(self, name: str) -> None:
        self.hosts[name].sshd.resume()

    def heal(self, name: str) -> None:
        """Undo every network fault of one host."""
        self.unslow(name)
        self.reconnect(name)
        self.unhang(name)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            super().stop()
        for name, netns in self.namespaces.items():
            _ip("link", "del", self.veths[name], check=False)
            _ip("netns", "del", netns, check=False)
        _ip("link", "del", self.bridge, check=False)
