"""A run that an upgrade or a removal overtakes renders its mail and page with the
templates it started with (an outside walk: a pull whose package was removed under it
failed "No module named 'pullback.server.templates'"; one overtaken by an upgrade
rendered the new page)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pullback.common
import pullback.server

OVERTAKEN = """
import shutil, sys
from pullback.server import report
from pullback.client import outputs
shutil.rmtree(sys.argv[1] + "/server/templates")  # what dpkg does to a removed package
shutil.rmtree(sys.argv[1] + "/client/templates")
print(report.render_text([]).splitlines()[0])
print(len(outputs.FAILURE_TEMPLATE))
"""


def test_templates_are_read_as_the_command_starts(tmp_path):
    tree = tmp_path / "site" / "pullback"
    tree.mkdir(parents=True)
    (tree / "__init__.py").write_text("")
    for package in (pullback.common, pullback.server):
        shutil.copytree(Path(package.__path__[0]), tree / Path(package.__path__[0]).name)
    client = Path(pullback.server.__path__[0]).parent / "client"
    shutil.copytree(client, tree / "client")
    done = subprocess.run(
        [sys.executable, "-c", OVERTAKEN, str(tree)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(tree.parent), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    headline, failure = done.stdout.splitlines()
    assert headline and int(failure) > 100, done.stdout
    assert not (tree / "server/templates").exists()
