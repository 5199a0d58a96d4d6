"""A repository store reached over SSH: a real sshd on loopback (tests/helpers/sshd.py)
whose one authorized key is locked to the store's program by a forced command, as a
storage machine would be set up:

- restic's ``sftp:`` backend: ``restrict,command="/usr/lib/openssh/sftp-server -d DIR"``;
- borg's ``ssh://`` repositories: ``restrict,command="borg serve --restrict-to-path DIR"``.

The pull server's side: its own key for the store, a pinned known_hosts, and an ssh
client configuration naming the store (``Host pullback-store``), what
``/etc/ssh/ssh_config.d/pullback-store.conf`` holds on a real server. restic runs ``ssh``
from ``PATH`` with no way to add options through pullback, so the tests put a ``ssh``
first in ``PATH`` that reads this file (``ssh -F``) and nothing else of the machine's;
borg is given its options by ``BORG_RSH``, as the environment of the units would.
"""

from __future__ import annotations

import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.sshd import Sshd, make_key

SFTP_SERVER = "/usr/lib/openssh/sftp-server"
ALIAS = "pullback-store"


@dataclass
class SshStore:
    """A directory of repositories behind one sshd, and the client files to reach it."""

    root: Path
    program: str
    """``sftp`` (restic) or ``borg``."""
    directory: Path = field(init=False)
    sshd: Sshd = field(init=False)

    def __post_init__(self):
        self.directory = self.root / "store"
        self.directory.mkdir(parents=True)
        client = self.root / "client"
        self.key = make_key(client / "store_ed25519")
        self.known_hosts = client / "store_known_hosts"
        self.ssh_config = client / "ssh_config"
        self.bin = client / "bin"

    def forced_command(self) -> str:
        if self.program == "sftp":
            return f"{SFTP_SERVER} -d {self.directory}"
        # borg serve keeps its own files (security, config) out of the machine's /root
        base = self.root / "serve-base"
        borg = shutil.which("borg") or "/usr/bin/borg"
        return f"BORG_BASE_DIR={base} {borg} serve --restrict-to-path {self.directory}"

    def start(self) -> SshStore:
        # plain: sshd offers the sftp subsystem (restic asks for it); the key is then
        # locked to the store's program below (sshd reads authorized_keys at each login)
        self.sshd = Sshd(self.root / "sshd", Path(f"{self.key}.pub"), "", plain=True).start()
        key = Path(f"{self.key}.pub").read_text().strip()
        authorized = self.root / "sshd" / "authorized_keys"
        authorized.write_text(f'restrict,command="{self.forced_command()}" {key}\n')
        self.known_hosts.write_text(self.sshd.known_hosts_line())
        self.ssh_config.write_text(
            f"Host {ALIAS}\n"
            f"    HostName {self.sshd.address}\n"
            f"    Port {self.sshd.port}\n"
            f"    User {self.sshd.user}\n"
            f"    IdentityFile {self.key}\n"
            "    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {self.known_hosts}\n"
            "    GlobalKnownHostsFile /dev/null\n"
            "    StrictHostKeyChecking yes\n"
            "    BatchMode yes\n"
            "    ServerAliveInterval 15\n"
        )
        self.bin.mkdir(parents=True, exist_ok=True)
        ssh = self.bin / "ssh"
        real = shutil.which("ssh") or "/usr/bin/ssh"
        config = shlex.quote(str(self.ssh_config))
        ssh.write_text(
            "#!/bin/sh\n"
            "# ssh with the store's configuration (a command line naming its own -F keeps it)\n"
            f'case " $* " in *" -F "*) exec {real} "$@" ;; esac\n'
            f'exec {real} -F {config} "$@"\n'
        )
        ssh.chmod(0o755)
        return self

    def restic_url(self, path: str) -> str:
        """restic's location of ``path`` below the store (``{host}`` may be in it)."""
        return f"sftp:{ALIAS}:{self.directory}/{path}"

    def borg_url(self, path: str) -> str:
        """borg's location of ``path`` below the store: user, address and port in it."""
        sshd = self.sshd
        return f"ssh://{sshd.user}@{sshd.address}:{sshd.port}{self.directory}/{path}"

    def borg_rsh(self) -> str:
        """``BORG_RSH``: the store's key and pinned host key, nothing asked."""
        return shlex.join(
            [
                "ssh",
                "-i",
                str(self.key),
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                f"UserKnownHostsFile={self.known_hosts}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
            ]
        )

    def env(self) -> dict[str, str]:
        """What the pull server's environment carries to reach the store."""
        if self.program == "sftp":
            return {"PATH": f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        return {"BORG_RSH": self.borg_rsh()}

    def stop(self) -> None:
        if getattr(self, "sshd", None) is not None:
            self.sshd.stop()
