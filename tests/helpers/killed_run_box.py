"""A client with two services and a kept mail, for attacks on the record of a run under
way (tests/integration/test_attacks_h105.py, _h106.py; test_killed_runs.py reads its
status file and mails the same way).

``files`` is quick; ``shop`` has a systemd task (``app.service``, through the recording
stand-in of tests/standins/standin.py behind the wrappers of
tests/helpers/standin_wrappers.py). The mail goes through a sendmail that keeps each
message; the metrics go to ``client.prom``.

:func:`mailed_client` is the same client with quick services of your choice (the tests
of the client's status file: test_client_status_entries.py, test_attacks_h107.py,
_h108.py; test_killed_runs.py); :func:`site_env` puts a bug into a run.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

from tests.helpers.client import ClientSandbox
from tests.helpers.standin_wrappers import wrapped_env

KILLED = "ended before its finish (killed?)"
AT = "2026-12-05T01:00:00Z"

QUICK = """\
service: {{name: {name}}}
command:
  dump: [{{run: "echo data", output: out.txt}}]
"""
SLOW = """\
service: {{name: {name}}}
command:
  dump: [{{run: "echo data; touch {marker}; exec sleep 60", output: out.txt}}]
"""
SHOP = """\
service: {name: shop}
systemd: {units: [app.service]}
command:
  dump: [{run: "echo data", output: out.txt}]
  restore: ["true"]
"""
SHOP_STOPPED = {"service": "shop", "task": "systemd", "names": ["app.service"]}
KILLED_RUN = {"pid": 4242, "at": AT, "services": ["files", "shop"]}


class Box(ClientSandbox):
    marker: Path
    mails: Path
    env: dict
    sendmail: Path
    calls: object


def make_box(tmp_path: Path, standins) -> Box:
    """The client in ``tmp_path/client`` (``standins``: the fixture of
    tests/integration/conftest.py)."""
    standins.set(running=[], active=["app.service"])
    b = Box(tmp_path / "client")
    b.marker = tmp_path / "mark"
    b.mails = tmp_path / "mails.txt"
    b.sendmail = tmp_path / "sendmail"
    b.calls = standins.calls
    set_sendmail(b)
    configure(b)
    b.env = {**os.environ, **wrapped_env(tmp_path, standins.env, b.marker)}
    b.add_service("files", QUICK.format(name="files"))
    b.add_service("shop", SHOP)
    return b


def set_sendmail(b: Box, script: str = "") -> None:
    """The sendmail program: ``script``, or one that keeps each message."""
    body = script or f"cat >> {b.mails}; echo ==== >> {b.mails}"
    b.sendmail.write_text(f"#!/bin/sh\n{body}\n")
    b.sendmail.chmod(0o755)


def configure(b: Box, send: str = "on_problem", timeout: str = "30s", **extra) -> None:
    """client.yaml with the mail through the sendmail, the metrics file and ``extra``."""
    email = {"sendmail": str(b.sendmail), "from": "pb@x.test", "to": ["root@x.test"]}
    email.update(send=send, smtp={"timeout": timeout})
    b.write_config(email=email, metrics_file=str(b.root / "client.prom"), **extra)


def good_day(b: Box) -> None:
    """One good run: status ok, no record left."""
    made = b.cli("run", env=b.env)
    assert made.returncode == 0, made.stderr
    assert status(b)["last_run_ok"] is True
    assert not record(b).exists()


def status(b: Box) -> dict:
    return json.loads((b.archives / ".client-status.json").read_text())


def mails(b: Box) -> list[str]:
    if not b.mails.exists():
        return []
    return [m for m in b.mails.read_text().split("====\n") if m.strip()]


def record(b: Box) -> Path:
    return b.root / "stopped.json"


def write_record(b: Box, run: dict | None, *entries: dict) -> None:
    """A record of ``entries`` (stopped by run 4242) and the mark ``run``, root's 0600."""
    full = [{"by": "run", "pid": 4242, "at": AT, **e} for e in entries]
    doc: dict = {"version": 1, "stopped": full}
    if run is not None:
        doc["run"] = run
    record(b).write_text(json.dumps(doc))
    record(b).chmod(0o600)


INTERNAL = "an internal error ended the run ({}; the traceback is in the log: please report it)"
"""What the status file says of a run a bug ended (``.format`` the exception's type)."""


def mailed_client(tmp_path: Path, *names: str, **config) -> ClientSandbox:
    """A client in ``tmp_path/client`` with the quick services ``names``, its mail kept
    (``box.mails``, read by :func:`mails`; ``box.email`` the section), its metrics in
    ``client.prom`` and ``config`` in client.yaml (``box.extra``)."""
    box = ClientSandbox(tmp_path / "client")
    box.mails = tmp_path / "mails.txt"
    sendmail = tmp_path / "sendmail"
    sendmail.write_text(f"#!/bin/sh\ncat >> {box.mails}; echo ==== >> {box.mails}\n")
    sendmail.chmod(0o755)
    box.email = {"sendmail": str(sendmail), "from": "pb@x.test", "to": ["root@x.test"]}
    box.extra = config
    box.write_config(email=box.email, metrics_file=str(box.root / "client.prom"), **config)
    for name in names:
        box.add_service(name, QUICK.format(name=name))
    return box


def site_env(tmp_path: Path, code: str) -> dict:
    """The environment of a run with ``code`` as its sitecustomize: how a test puts a bug
    into a run (the only stand-in: no real bug is known that ends a run so)."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(textwrap.dedent(code))
    return {"PYTHONPATH": str(site)}


def metric_services(box: ClientSandbox) -> list[str]:
    """The services ``pullback_client_service_ok`` names in the metrics file."""
    lines = (box.root / "client.prom").read_text().splitlines()
    return sorted(
        line.split('"')[1] for line in lines if line.startswith("pullback_client_service_ok{")
    )


def wait_for_file(path: Path, proc, seconds: float = 60) -> None:
    """Wait until ``path`` exists (a stand-in's marker: the command got that far); raises
    AssertionError when ``proc`` ended first or ``seconds`` passed."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"never reached {path}"
        time.sleep(0.05)
