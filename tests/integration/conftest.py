"""Fixtures the integration tests share: real database servers."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.helpers.databases import MariaDB, Postgres


@pytest.fixture
def shared_root():
    """A directory the postgres and mysql users can reach (pytest's tmp is root-only)."""
    root = Path(tempfile.mkdtemp(prefix="pullback-db-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg(shared_root):
    """A PostgreSQL server of its own: ``postgres`` over the socket, ``backup`` over TCP."""
    server = Postgres(shared_root / "pg").start()
    yield server
    server.stop()


@pytest.fixture
def maria(shared_root):
    """A MariaDB server of its own: root over the socket, ``backup`` over TCP."""
    server = MariaDB(shared_root / "maria").start()
    yield server
    server.stop()
