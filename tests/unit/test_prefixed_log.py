"""A host's log lines say its name once: ``[web1] ...``, never ``[web1] web1: ...``."""

from __future__ import annotations

import logging

from pullback.common.log import PrefixAdapter


def test_the_prefix_is_said_once(caplog):
    log = PrefixAdapter(logging.getLogger("pullback.test"), "web1")
    with caplog.at_level(logging.INFO, logger="pullback.test"):
        log.info("%s", "web1: web1-20261202T030000Z.tar.zst is no longer on the client")
        log.warning("web1: cannot connect")
        log.info("fetched %d bytes from %s", 42, "web1")
        log.info("web10: another host's words stay whole")
        log.info("100% done")
    assert [r.getMessage() for r in caplog.records] == [
        "[web1] web1-20261202T030000Z.tar.zst is no longer on the client",
        "[web1] cannot connect",
        "[web1] fetched 42 bytes from web1",
        "[web1] web10: another host's words stay whole",
        "[web1] 100% done",
    ]


def test_an_argument_that_cannot_be_shown_does_not_raise_and_the_callers_line_is_kept(caplog):
    class Broken:
        def __str__(self):
            raise RuntimeError("boom")

    log = PrefixAdapter(logging.getLogger("pullback.test"), "web1")
    logging.raiseExceptions, raised = False, logging.raiseExceptions  # as in production
    try:
        with caplog.at_level(logging.INFO, logger="pullback.test"):
            log.info("%s", Broken())  # no exception reaches the caller
            log.info("fine")
    finally:
        logging.raiseExceptions = raised
    assert caplog.records[-1].getMessage() == "[web1] fine"
    assert caplog.records[-1].filename == "test_prefixed_log.py"
