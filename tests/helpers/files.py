"""Files the tests write the way an administrator must: secrets readable by root alone."""

from __future__ import annotations

from pathlib import Path


def secret_file(path: Path, text: str) -> Path:
    """Write ``text`` (a line: a newline is added if it has none) to ``path``, mode 0600;
    return ``path``."""
    path.write_text(text if text.endswith("\n") else text + "\n")
    path.chmod(0o600)
    return path
