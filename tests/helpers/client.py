"""A client sandbox: a client.yaml with its own directories and service files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.helpers.files import secret_file


@dataclass
class ClientSandbox:
    root: Path
    hostname: str = "testhost"

    def __post_init__(self):
        self.services = self.root / "services"
        self.archives = self.root / "archives"
        self.work = self.root / "work"
        self.run_dir = self.root / "run"
        self.config = self.root / "client.yaml"
        self.services.mkdir(parents=True, exist_ok=True)
        self.write_config()

    def write_config(self, **extra) -> Path:
        """client.yaml with this sandbox's directories and ``extra``. Incremental archives
        are off unless ``incremental`` is given (its file cache then in the sandbox unless
        it says where): tests of full archives stay full whatever the server says."""
        data = {
            "hostname": self.hostname,
            "archive_dir": str(self.archives),
            "work_dir": str(self.work),
            "lock_dir": str(self.run_dir),
            "service_dirs": [str(self.services)],
            "min_free_space": "1M",
            "incremental": {"enabled": False},
        }
        if "incremental" in extra:
            extra["incremental"] = {"cache_dir": str(self.root / "cache"), **extra["incremental"]}
        data.update(extra)
        self.config.write_text(yaml.safe_dump(data))
        self.config.chmod(0o600)  # (as an administrator keeps it: it may hold a secret)
        return self.config

    def secret(self, name: str, value: str) -> Path:
        """A password file ``name`` in the sandbox holding ``value`` (mode 0600)."""
        return secret_file(self.root / name, value)

    def add_service(self, name: str, text: str, subdir: str | None = None, mode: int = 0o600):
        directory = self.services / (f"{subdir}/{name}" if subdir else name)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "service.yaml"
        path.write_text(textwrap.dedent(text))
        path.chmod(mode)
        return path

    def cli(self, *args: str, timeout: float = 120, env=None, **kwargs):
        """Run pullback-client as a subprocess (the module, so both venvs work)."""
        argv = [sys.executable, "-m", "pullback.client.cli", "--config", str(self.config), *args]
        full_env = dict(os.environ)
        full_env.update(env or {})
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=full_env, **kwargs
        )

    def popen(self, *args: str, **kwargs):
        argv = [sys.executable, "-m", "pullback.client.cli", "--config", str(self.config), *args]
        return subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
        )

    def published(self) -> list[Path]:
        return sorted(
            p
            for p in self.archives.glob("*.tar*")
            if not p.name.endswith(".json") and not p.name.startswith(".")  # partials
        )

    def sidecar(self, archive: Path) -> dict:
        return json.loads(archive.with_name(archive.name + ".json").read_text())

    def leftovers(self) -> list[str]:
        """Temporary files or staging directories a finished run must not leave behind."""
        found = [p.name for p in self.archives.glob(".*.partial")] if self.archives.exists() else []
        if self.work.exists():
            found += [p.name for p in self.work.iterdir()]
        return found


GOOD_FILES = """\
service:
  name: zgood
files:
  paths: [{data}]
"""


def with_plugin(box: ClientSandbox, name: str, source: str) -> ClientSandbox:
    """``box`` with ``source`` as the plugin ``<name>.py`` in its plugin_dirs (beside
    its root) and a good files service ``zgood`` (sorted last: it runs after the others)
    backing ``data/a.txt`` there; ``box.data`` is that directory. Returns ``box``."""
    plugins = box.root.parent / "plugins"
    plugins.mkdir(exist_ok=True)
    (plugins / f"{name}.py").write_text(source)
    data = box.root.parent / "data"
    data.mkdir(exist_ok=True)
    (data / "a.txt").write_text("good data\n")
    box.data = data  # type: ignore[attr-defined]
    box.write_config(plugin_dirs=[str(plugins)])
    box.add_service("zgood", GOOD_FILES.format(data=data))
    return box


def placed(box: ClientSandbox, tmp_path: Path, where: Path, **config) -> ClientSandbox:
    """``box`` with its archive and work directories in ``where`` (a file system of the
    test's own): ``box.where`` the configuration's keys for it (and ``config``),
    ``box.env`` the test plugins' FILL_OUT (``tmp_path/out``), their ``plugin_dirs``
    ``tmp_path/plugins``."""
    box.archives, box.work = where / "archives", where / "work"
    box.where = {
        "plugin_dirs": [str(tmp_path / "plugins")],
        "archive_dir": str(box.archives),
        "work_dir": str(box.work),
        **config,
    }
    box.env = {"FILL_OUT": str(tmp_path / "out")}
    return box


def leave_free(where: Path, free: int) -> None:
    """Fill ``where``'s file system with a ballast file until ``free`` bytes are left."""
    import shutil

    now = shutil.disk_usage(where).free
    assert now > free, (now, free)
    with open(where / "ballast", "ab") as ballast:
        ballast.write(bytes(now - free))
