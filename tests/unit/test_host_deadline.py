"""server.host.Deadline: a host's time limit sets its cancel event, says it was the one,
and frees the event for the work after its block."""

import threading
import time

from pullback.server.host import Deadline


def test_a_limit_that_passes_sets_the_event_and_clears_it_on_leaving():
    cancel = threading.Event()
    with Deadline(cancel, 0.05, "host_timeout") as limit:
        assert cancel.wait(5)
        assert limit.passed
    assert not cancel.is_set()
    assert limit.words == "stopped at host_timeout (0s)"


def test_a_limit_not_reached_leaves_a_signal_s_cancel_alone():
    cancel = threading.Event()
    with Deadline(cancel, 60, "maintenance.timeout") as limit:
        cancel.set()  # SIGTERM: for_each_host cancels every host
    assert not limit.passed
    assert cancel.is_set()
    time.sleep(0.01)


def test_an_inner_limit_frees_the_event_and_the_outer_one_still_knows_it_passed():
    cancel = threading.Event()
    with Deadline(cancel, 0.1, "maintenance.timeout") as outer:
        with Deadline(cancel, 0.02, "host_timeout") as inner:
            assert cancel.wait(5)
            time.sleep(0.2)
        assert inner.passed and outer.passed
    assert not cancel.is_set()
