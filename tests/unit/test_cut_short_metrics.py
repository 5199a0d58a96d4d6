"""``pullback_pull_cut_short``: the gauges of a pull cut short before it wrote the status
file, from the journal it left (the integration test kills real pulls:
tests/integration/test_cut_short_outputs.py)."""

from __future__ import annotations

import datetime as dt

from pullback.server import metrics
from pullback.server.config import load_server_config
from pullback.server.journal import NO_ACTIVITY, InterruptedRun, PullActivity

NOW = dt.datetime(2026, 12, 3, 4, 0, tzinfo=dt.UTC)
STATUS = {"hosts": {"web1": {"last_result": "stored", "newest_snapshot": "2026-12-03T03:00:00Z"}}}


def render(tmp_path, activity: PullActivity) -> str:
    path = tmp_path / "server.yaml"
    path.write_text(f"state_dir: {tmp_path}/state\nhosts: [{{name: web1}}, {{name: web2}}]\n")
    return metrics.build(load_server_config(path), STATUS, NOW, activity).render()


def test_every_host_is_0_while_no_pull_is_cut_short(tmp_path):
    text = render(tmp_path, NO_ACTIVITY)
    assert 'pullback_pull_cut_short{host="web1"} 0' in text
    assert 'pullback_pull_cut_short{host="web2"} 0' in text
    assert "pullback_pull_cut_short_started_timestamp_seconds" not in text


def test_the_hosts_the_cut_pull_was_pulling_are_1_and_when_it_began(tmp_path):
    killed = InterruptedRun(42, "2026-12-03T03:00:02Z", {"web2": "storing"}, stopped_by="SIGTERM")
    text = render(tmp_path, PullActivity(killed=killed))
    assert 'pullback_pull_cut_short{host="web1"} 0' in text
    assert 'pullback_pull_cut_short{host="web2"} 1' in text
    began = dt.datetime(2026, 12, 3, 3, 0, 2, tzinfo=dt.UTC).timestamp()
    assert f"pullback_pull_cut_short_started_timestamp_seconds {began:.15g}\n" in text
    # the status file's gauges still say the pull before it
    assert 'pullback_last_attempt_ok{host="web1"} 1' in text


def test_a_pull_running_is_not_cut_short_and_a_journal_s_odd_words_break_nothing(tmp_path):
    running = InterruptedRun(43, "2026-12-03T03:00:02Z", {"web1": "connecting"})
    assert 'pullback_pull_cut_short{host="web1"} 0' in render(
        tmp_path, PullActivity(running=running)
    )
    odd = InterruptedRun(44, "not a time", {"gone-host": "storing", "web1": "storing"})
    text = render(tmp_path, PullActivity(killed=odd))
    assert 'pullback_pull_cut_short{host="web1"} 1' in text
    assert "gone-host" not in text  # a host no longer configured has no gauge
    assert "pullback_pull_cut_short_started_timestamp_seconds" not in text
