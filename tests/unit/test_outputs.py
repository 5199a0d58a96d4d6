"""What the people watching get never stops the rest of what they get."""

from __future__ import annotations

import json

from pullback.server import outputs
from pullback.server.config import load_server_config


def test_a_status_the_metrics_cannot_hold_still_leaves_the_page(tmp_path, caplog, monkeypatch):
    """A number the metrics cannot hold (10**400 is valid JSON) is left out as status.json
    is read (helper-134 F3: one checker of its values), and both outputs are written; a
    metrics file that fails anyhow still leaves the page."""
    path = tmp_path / "server.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\nlock_dir: {tmp_path}\n"
        f"metrics_file: {tmp_path / 'pullback.prom'}\nstatus_page: {tmp_path / 'index.html'}\n"
        "hosts:\n  - name: web1\n"
    )
    config = load_server_config(path)
    (tmp_path / "state").mkdir()
    huge = {"hosts": {"web1": {"last_result": "stored", "content_bytes": 10**400}}}
    (tmp_path / "state" / "status.json").write_text(json.dumps(huge))
    assert outputs.publish(config)[1] == []
    assert "web1.content_bytes" in caplog.text
    assert (tmp_path / "pullback.prom").exists() and (tmp_path / "index.html").exists()
    (tmp_path / "index.html").unlink()

    def broken(*args):
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr(outputs.metrics, "write", broken)
    outputs.publish(config)  # raises nothing
    assert (tmp_path / "index.html").exists()
    assert "could not write the" in caplog.text


def _config(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\nlock_dir: {tmp_path}\n"
        f"metrics_file: {tmp_path / 'pullback.prom'}\nstatus_page: {tmp_path / 'index.html'}\n"
        "hosts:\n  - name: web1\n"
    )
    (tmp_path / "state").mkdir()
    return load_server_config(path)


def test_outputs_are_written_again_when_the_status_changed_meanwhile(tmp_path, monkeypatch):
    """``publish`` (the pull unit's ExecStopPost) beside a maintenance recording its run:
    the status read, then a new one recorded while the metrics are written. Before, the
    publish that read first and wrote last showed the run before; now it writes again
    from the new status. No lock: a slow disk holds no writer of the status up (an
    outside review saw a status writer wait for a slow metrics write)."""
    from pullback.server import metrics

    config = _config(tmp_path)
    status_path = tmp_path / "state" / "status.json"
    old = {"hosts": {"web1": {"last_result": "stored", "maintain_result": "ok"}}}
    new = {"hosts": {"web1": {"last_result": "stored", "maintain_result": "failed"}}}
    status_path.write_text(json.dumps(old))
    real_write = metrics.write
    calls = []

    def write(config, status, activity):
        calls.append(status["hosts"]["web1"]["maintain_result"])
        if len(calls) == 1:  # the maintenance records its run meanwhile
            replacement = status_path.with_suffix(".new")
            replacement.write_text(json.dumps(new))
            replacement.replace(status_path)
        real_write(config, status, activity)

    monkeypatch.setattr(metrics, "write", write)
    status, _ = outputs.publish(config)
    assert calls == ["ok", "failed"]
    assert status["hosts"]["web1"]["maintain_result"] == "failed"
    assert 'pullback_last_maintain_ok{host="web1"} 0' in (tmp_path / "pullback.prom").read_text()


def test_outputs_of_a_status_that_keeps_changing_are_written_a_bounded_number_of_times(
    tmp_path, monkeypatch
):
    from pullback.server import metrics

    config = _config(tmp_path)
    status_path = tmp_path / "state" / "status.json"
    status_path.write_text(json.dumps({"hosts": {}}))
    calls = []

    def write(config, status, activity):
        calls.append(1)
        replacement = status_path.with_suffix(".new")
        replacement.write_text(json.dumps({"hosts": {}, "n": len(calls)}))
        replacement.replace(status_path)

    monkeypatch.setattr(metrics, "write", write)
    outputs.publish(config)
    assert len(calls) == outputs.PUBLISH_TRIES
