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
