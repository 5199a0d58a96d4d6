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
