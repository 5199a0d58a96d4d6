"""The shipped systemd units: a timer's tick that meets another run's lock is skipped,
not failed (a failed unit makes the system "degraded" and pages whoever watches it)."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"


def service(name: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser["Service"]


@pytest.mark.parametrize("name", ["pullback-server.service", "pullback-client.service"])
def test_a_tick_that_meets_the_lock_is_not_a_failure(name):
    assert service(name).get("SuccessExitStatus") == "75"


def test_maintenance_that_never_got_the_lock_still_fails():
    # it waited maintenance.wait_for_pull for a pull and did not run: worth a failed unit
    assert "SuccessExitStatus" not in service("pullback-maintain.service")
