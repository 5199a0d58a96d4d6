"""What the people watching get never stops the rest of what they get."""

from __future__ import annotations

import json

from pullback.server import outputs
from pullback.server.config import load_server_config


def test_a_status_the_metrics_cannot_hold_still_leaves_the_page(tmp_path, caplog):
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


def test_a_writer_of_the_status_waits_while_the_outputs_are_written(tmp_path, monkeypatch):
    """``publish`` (the pull unit's ExecStopPost) beside a maintenance recording its run:
    the outputs are written while status.lock is held, so a status written meanwhile
    waits, and the maintenance's own publish, after it, shows it. Before, a publish that
    read the status first and wrote last showed the run before."""
    from pullback.common.locks import FileLock, LockBusy
    from pullback.server import metrics, status_file

    config = _config(tmp_path)
    seen = []
    real_write = metrics.write

    def write(config, status, activity):
        other = FileLock(config.state_dir / status_file.STATUS_LOCK)
        try:
            other.acquire()
        except LockBusy:
            seen.append("held")
        else:
            other.release()
            seen.append("free")
        real_write(config, status, activity)

    monkeypatch.setattr(metrics, "write", write)
    outputs.publish(config)
    assert seen == ["held"]
    assert (tmp_path / "pullback.prom").exists()


def test_the_outputs_are_written_when_status_lock_cannot_be_taken(tmp_path, monkeypatch, caplog):
    from pullback.server import status_file

    config = _config(tmp_path)
    monkeypatch.setattr(status_file, "STATUS_LOCK_WAIT", 0.2)
    from pullback.common.locks import FileLock

    with FileLock(config.state_dir / status_file.STATUS_LOCK).acquire():
        outputs.publish(config)
    assert (tmp_path / "pullback.prom").exists() and (tmp_path / "index.html").exists()
    assert "written without it" in caplog.text
