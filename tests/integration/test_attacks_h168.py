"""helper-168, an outside attacker of commit ebe1aae: a real fleet (real sshd, the real
client's serve) and the server's partial downloads.

Each test named ``test_f*`` fails while its defect exists and passes once it is fixed.

Run: .venv/bin/python -m pytest -q -p no:cacheprovider tests/integration/test_attacks_h168.py
"""

from __future__ import annotations

import os
import time

import pytest

from tests.helpers.fleet import Fleet

pytestmark = pytest.mark.integration

MIB = 1 << 20


def test_f5_a_dry_run_removes_no_partial_download(tmp_path):
    """``pull --dry-run``: "ask the clients what would be fetched; store nothing" (it
    keeps no journal, writes no status.json). drop_stale_partials, new in ebe1aae, runs
    first in HostPull._steps whatever the options: a dry run deletes the host's partial
    downloads older than partial_max_age (here the partial of the very archive the dry
    run says it would fetch), which only a real pull's fetch did before."""
    fleet = Fleet(tmp_path / "fleet")
    try:
        host = fleet.add_host("h0")
        archive = host.make_archive({"big.bin": os.urandom(2 * MIB)})
        fleet.write_config(partial_max_age="1h")
        partial_dir = fleet.state / "partial" / "h0"
        partial_dir.mkdir(parents=True)
        partial = partial_dir / archive.name
        partial.write_bytes(archive.read_bytes()[:MIB])
        (partial_dir / (archive.name + ".started")).write_text(f"{time.time() - 7200:.0f}\n")
        dry = fleet.server("pull", "--dry-run", timeout=120)
        assert dry.returncode == 0, dry.stderr[-3000:]
        assert partial.exists(), "pull --dry-run removed the partial download: " + next(
            (line for line in dry.stderr.splitlines() if "removing" in line), dry.stderr[-2000:]
        )
    finally:
        fleet.stop()
