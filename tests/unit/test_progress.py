"""The terminal's progress display: bytes, rate, time left; one line, never in a log."""

from __future__ import annotations

import io
import logging

from pullback.common import log as logs
from pullback.common.progress import Progress, StatusLine
from pullback.common.units import human_size


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bytes_rate_and_time_left():
    clock = Clock()
    progress = Progress("fetch", 100 << 20, clock=clock)
    clock.now += 5
    progress.advance(50 << 20)
    assert progress.text() == (
        f"fetch {human_size(50 << 20)} of {human_size(100 << 20)} (50%), "
        f"{human_size(10 << 20)}/s, 5s left"
    )
    unknown = Progress("pack", clock=clock)
    clock.now += 2
    unknown.advance(4 << 20)
    assert unknown.text() == f"pack {human_size(4 << 20)}, {human_size(2 << 20)}/s"


def test_a_resumed_transfer_counts_its_rate_from_where_it_resumed():
    clock = Clock()
    progress = Progress("fetch", 100, start=90, clock=clock)
    clock.now += 10
    progress.done = 95
    assert "0%" not in progress.text() and "95%" in progress.text()
    assert f"{human_size(0.5)}/s, 10s left" in progress.text()


def test_the_status_line_is_one_line_cut_to_the_terminal_and_cleared():
    stream = io.StringIO()
    line = StatusLine(stream, enabled=True)
    line.show("web1", "web1: " + "x" * 200, force=True)
    drawn = stream.getvalue()
    assert drawn.startswith("\r\x1b[K") and "\n" not in drawn
    assert len(drawn) - len("\r\x1b[K") == 79 and drawn.endswith("…")
    line.show("db1", "db1: storing", force=True)
    assert stream.getvalue().endswith(" | db1: storing"[:0] or "…")  # still cut to 79
    line.drop("web1")
    assert stream.getvalue().endswith("\r\x1b[Kdb1: storing")
    line.clear()
    assert stream.getvalue().endswith("\r\x1b[K")


def test_a_log_line_is_written_above_the_status_line(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(logs.STATUS, "stream", stream)
    monkeypatch.setattr(logs.STATUS, "enabled", True)
    monkeypatch.setattr(logs.STATUS, "_entries", {})
    handler = logs._Console(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logs.STATUS.show("web1", "web1: fetch 1 MiB", force=True)
    handler.emit(logging.makeLogRecord({"msg": "stored"}))
    assert stream.getvalue() == (
        "\r\x1b[Kweb1: fetch 1 MiB" + "\r\x1b[K" + "stored\n" + "\r\x1b[Kweb1: fetch 1 MiB"
    )


def test_nothing_is_drawn_when_disabled():
    stream = io.StringIO()
    line = StatusLine(stream, enabled=False)
    line.show("web1", "web1: fetch", force=True)
    line.drop("web1")
    line.clear()
    assert stream.getvalue() == ""
