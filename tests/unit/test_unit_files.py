"""The shipped systemd units: a timer's tick that meets another run's lock is skipped,
not failed (a failed unit makes the system "degraded" and pages whoever watches it)."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"


def unit_file(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


def service(name: str) -> configparser.SectionProxy:
    return unit_file(name)["Service"]


@pytest.mark.parametrize("name", ["pullback-server.service", "pullback-client.service"])
def test_a_tick_that_meets_the_lock_is_not_a_failure(name):
    assert service(name).get("SuccessExitStatus") == "75"


def test_maintenance_that_never_got_the_lock_still_fails():
    # it waited maintenance.wait_for_pull for a pull and did not run: worth a failed unit
    assert "SuccessExitStatus" not in service("pullback-maintain.service")


# what only a backup run needs: its own start, its schedule's exits, its priority
RUN_ONLY = {
    "ExecCondition",
    "ExecStart",
    "ExecStopPost",
    "SuccessExitStatus",
    "TimeoutStopSec",
    "Nice",
    "IOSchedulingClass",
    "IOSchedulingPriority",
}


def test_the_boot_start_of_stopped_applications_is_sandboxed_as_a_run():
    """pullback-client-start-stopped.service runs the same code a run's ExecStopPost= runs
    (starting applications, writing the status file and metrics, mailing): the same
    sandbox, line for line, so that neither drifts from the other."""
    run = service("pullback-client.service")
    boot = service("pullback-client-start-stopped.service")
    shared = {key: value for key, value in run.items() if key not in RUN_ONLY}
    assert "ProtectSystem" in shared and "CapabilityBoundingSet" in shared
    assert {key: boot.get(key) for key in shared} == shared
    assert boot["ExecStart"] == "/usr/bin/pullback-client start-stopped"


def test_the_boot_start_is_outside_the_boots_ordering():
    """Enabled in multi-user.target without multi-user.target waiting for it: a unit a
    run stopped may be ordered after multi-user.target, and starting it from a unit the
    target waits for would wait for the end of the boot (a deadlock until the timeout).
    It runs before a run the timer starts at boot, and after the applications' engines."""
    parser = unit_file("pullback-client-start-stopped.service")
    unit = parser["Unit"]
    assert unit["DefaultDependencies"] == "no"
    assert parser["Install"]["WantedBy"] == "multi-user.target"
    assert "multi-user.target" not in unit.get("Before", "")
    assert "pullback-client.service" in unit["Before"].split()
    assert {"docker.service", "postgresql.service", "mariadb.service"} <= set(unit["After"].split())
    assert "shutdown.target" in unit["Conflicts"].split()
