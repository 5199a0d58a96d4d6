"""One release number: the code's, the Python package's and the Debian packages'."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from pullback.common import __version__

ROOT = Path(__file__).resolve().parents[2]


def test_the_version_is_the_same_in_all_three_places():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    changelog = (ROOT / "debian/changelog").read_text().splitlines()[0]
    debian = re.match(r"^pullback \(([^)]+)\) ", changelog)
    assert debian is not None, changelog
    assert __version__ == project == debian.group(1)


def test_the_man_pages_carry_the_version():
    for page in sorted((ROOT / "docs/man").glob("*.8")):
        header = page.read_text().splitlines()[0]
        assert f'"pullback {__version__}"' in header, (page.name, header)
