"""Shared fixtures. Tests are marked by tier from their directory (unit, integration, system)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from pullback.common import secrets

TESTS = Path(__file__).parent
TIERS = ("unit", "integration", "system")


def pytest_collection_modifyitems(config, items):
    for item in items:
        relative = Path(str(item.fspath)).relative_to(TESTS)
        tier = relative.parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(autouse=True)
def _clean_global_state():
    """Forget secrets and undo the logging set-up a CLI call made (it binds to stderr)."""
    yield
    secrets.forget_all()
    logger = logging.getLogger("pullback")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


@pytest.fixture
def is_root() -> bool:
    return os.geteuid() == 0
