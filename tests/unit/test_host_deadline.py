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


def test_an_inner_limit_frees_the_event_unless_the_outer_one_passed_too():
    cancel = threading.Event()
    with Deadline(cancel, 60, "maintenance.timeout") as outer:
        with Deadline(cancel, 0.02, "host_timeout") as inner:
            assert cancel.wait(5)
        assert inner.passed and not outer.passed
        assert not cancel.is_set(), "the drill's limit stops the drill, not what follows"
    with Deadline(cancel, 0.1, "maintenance.timeout") as outer:
        with Deadline(cancel, 0.02, "host_timeout") as inner:
            assert cancel.wait(5)
            time.sleep(0.3)
        assert inner.passed and outer.passed
        assert cancel.is_set(), "helper-131: the outer limit passed too: the rest stays stopped"
    assert not cancel.is_set()


def test_a_limit_no_timer_can_wait_is_none():
    cancel = threading.Event()
    with Deadline(cancel, 1e30, "maintenance.timeout") as limit:  # (1000000w and more)
        pass
    assert not limit.passed and not cancel.is_set()


def test_a_timer_that_fires_as_the_block_ends_sets_nothing_after_it():
    cancel = threading.Event()
    limit = Deadline(cancel, 60, "host_timeout")
    with limit:
        pass
    limit._fire()  # (the timer thread, late)
    assert not limit.passed and not cancel.is_set()
