"""Files the tests write the way an administrator must (secrets readable by root alone),
and restored trees proven the way an administrator would (``sha256sum -c``)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def secret_file(path: Path, text: str) -> Path:
    """Write ``text`` (a line: a newline is added if it has none) to ``path``, mode 0600;
    return ``path``."""
    path.write_text(text if text.endswith("\n") else text + "\n")
    path.chmod(0o600)
    return path


def sha256sum_check(directory: Path) -> None:
    """Assert that GNU sha256sum proves every file ``directory/MANIFEST.sha256`` names."""
    result = subprocess.run(
        ["sha256sum", "--check", "--strict", "MANIFEST.sha256"],
        cwd=directory,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
