"""The metrics file as node_exporter's textfile collector reads it: every series (name
and labels) once. A second sample of one series makes the collector refuse the whole
file, and every pullback gauge goes silent: a maintained host once had
``pullback_last_maintained_timestamp_seconds`` twice, its second value a 0/1 (an
outside review). Read back with prometheus_client's own parser."""

from __future__ import annotations

import datetime as dt

from prometheus_client.parser import text_string_to_metric_families

from pullback.server import metrics
from pullback.server.config import load_server_config
from pullback.server.journal import NO_ACTIVITY

NOW = dt.datetime(2026, 12, 4, 4, 0, tzinfo=dt.UTC)
MAINTAINED = "2026-12-04T03:30:00Z"
ENTRY = {
    "last_result": "stored",
    "last_attempt": "2026-12-04T03:00:00Z",
    "last_success": "2026-12-04T03:00:00Z",
    "newest_snapshot": "2026-12-04T03:00:00Z",
    "last_verified": "2026-12-04T03:40:00Z",
    "verify_result": "ok",
    "last_maintained": MAINTAINED,
    "maintain_result": "failed",
    "guard_hold": {"since": "2026-12-04T03:30:00Z"},
    "copy": {"result": "ok", "copied": MAINTAINED, "maintain_result": "ok"},
}


def test_every_series_is_written_once_with_its_own_value(tmp_path):
    config = tmp_path / "server.yaml"
    config.write_text(
        f"state_dir: {tmp_path}/state\n"
        f"copy: {{repository_root: {tmp_path}/copy}}\n"
        "hosts: [{name: web1}, {name: web2}]\n"
    )
    status = {"hosts": {"web1": ENTRY, "web2": dict(ENTRY, maintain_result="ok")}}
    text = metrics.build(load_server_config(config), status, NOW, NO_ACTIVITY).render()
    seen: dict[tuple, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in seen, f"{key} written twice: {seen[key]} and {sample.value}"
            seen[key] = sample.value
    maintained = dt.datetime.fromisoformat(MAINTAINED.replace("Z", "+00:00")).timestamp()
    key = ("pullback_last_maintained_timestamp_seconds", (("host", "web1"),))
    assert seen[key] == maintained
    assert seen[("pullback_last_maintain_ok", (("host", "web1"),))] == 0
    assert seen[("pullback_copy_last_maintain_ok", (("host", "web1"),))] == 1
