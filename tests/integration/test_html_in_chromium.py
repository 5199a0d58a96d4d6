"""The status page and the summary mail, as a real browser (headless Chromium) renders them."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from pullback.common.outcome import Status
from pullback.server import report, status_page
from pullback.server.config import load_server_config
from pullback.server.fleet_view import rows
from pullback.server.results import HostResult

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (scripts/install-deps installs Debian's chromium)",
)

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def iso(delta: dt.timedelta) -> str:
    return (NOW - delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def dump_dom(tmp_path: Path, html: str) -> str:
    page = tmp_path / "page.html"
    page.write_text(html)
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


class Rows(HTMLParser):
    """Collects table rows that carry data-host, with their classes and cell texts."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, dict] = {}
        self._current = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-host" in attrs:
            self._current = {"class": attrs.get("class"), "text": "", "cells": 0}
            self.rows[attrs["data-host"]] = self._current
        elif (
            tag == "span"
            and self._current is not None
            and attrs.get("class") in ("stored", "failed", "skipped", "attention")
        ):
            self._current["cells"] += 1

    def handle_endtag(self, tag):
        if tag == "tr":
            self._current = None

    def handle_data(self, data):
        if self._current is not None:
            self._current["text"] += data


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(tmp_path / "state"),
                "hosts": [{"name": "good"}, {"name": "stale"}, {"name": "broken"}],
            }
        )
    )
    return load_server_config(path)


STATUS = {
    "hosts": {
        "good": {
            "last_result": "stored",
            "newest_snapshot": iso(dt.timedelta(hours=2)),
            "last_verified": iso(dt.timedelta(days=1)),
            "repository_bytes": 5 << 30,
            "duration": 42.0,
            "store_peak_rss": 90 << 20,
            "history": [
                {"result": "stored", "repository_bytes": 4 << 30},
                {"result": "stored", "repository_bytes": 5 << 30},
            ],
        },
        "stale": {
            "last_result": "skipped",
            "newest_snapshot": iso(dt.timedelta(days=4)),
            "reason": "the client has no archive to fetch",
            "problem": True,
            "history": [{"result": "attention"}],
        },
        "broken": {
            "last_result": "failed",
            "reason": "cannot connect: timed out",
            "newest_snapshot": iso(dt.timedelta(hours=30)),
            "history": [{"result": "stored"}, {"result": "failed"}],
        },
    }
}


def test_status_page_in_chromium(tmp_path, config):
    dom = dump_dom(tmp_path, status_page.render(config, STATUS, NOW))
    found = Rows()
    found.feed(dom)
    assert list(found.rows) == ["broken", "stale", "good"]  # failures and stale first
    assert found.rows["broken"]["class"] == "failed"
    assert found.rows["stale"]["class"] == "stale"
    assert found.rows["good"]["class"] == "ok"
    assert found.rows["good"]["cells"] == 2 and found.rows["broken"]["cells"] == 2
    assert "5.0 GiB, +1.0 GiB over the last 2 runs" in found.rows["good"]["text"]
    assert "90.0 MiB" in found.rows["good"]["text"]
    assert "cannot connect: timed out" in found.rows["broken"]["text"]
    assert "<script" not in status_page.render(config, STATUS, NOW)


def test_summary_mail_html_in_chromium(tmp_path, config):
    results = [
        HostResult(
            "good",
            Status.STORED,
            "stored good-1",
            archive="good-1",
            stamp="x",
            size=1 << 20,
            newest_snapshot=iso(dt.timedelta(minutes=1)),
        ),
        HostResult(
            "stale",
            "skipped",
            "the client has no archive to fetch",
            problem=True,
            newest_snapshot=iso(dt.timedelta(days=4)),
            stale=True,
        ),
        HostResult("broken", Status.FAILED, "cannot connect: timed out"),
    ]
    history = {r.host: r for r in rows(config, STATUS, NOW)}
    _, html = report.render(results, history, NOW)
    found = Rows()
    found.feed(dump_dom(tmp_path, html))
    assert list(found.rows) == ["broken", "stale", "good"]
    assert [found.rows[h]["class"] for h in found.rows] == ["failed", "stale", "ok"]
    assert "cannot connect: timed out" in found.rows["broken"]["text"]
