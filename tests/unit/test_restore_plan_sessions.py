"""A dry run of ``restore --replace`` whose service stops the application first does not
predict the failure that live sessions would cause without it (an outside walk: the dry
run said FAILED, the real restore stopped the unit, swapped and exited 0)."""

from __future__ import annotations

import logging

from pullback.plugins.task import RestorePlan

LOG = logging.getLogger("test")
BUSY = "1 session(s) are connected to shop (psql): stop the application"


def test_sessions_fail_a_real_restore_and_a_dry_run_that_stops_nothing():
    for plan in (
        RestorePlan("20261204T000000Z", replace=True),
        RestorePlan("20261204T000000Z", replace=True, stops_first=True),  # stopped by then
        RestorePlan("20261204T000000Z", replace=True, dry_run=True),
    ):
        assert plan.sessions_problem(LOG, BUSY) == [BUSY]


def test_a_dry_run_whose_service_stops_the_application_says_what_it_would_meet(caplog):
    plan = RestorePlan("20261204T000000Z", replace=True, dry_run=True, stops_first=True)
    with caplog.at_level(logging.INFO):
        assert plan.sessions_problem(LOG, BUSY) == []
    assert f"would: {BUSY}; the application is stopped first, which ends them" in caplog.text
