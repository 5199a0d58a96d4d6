"""What a ping or a message carries of a long report (a real HTTP server on loopback)."""

from __future__ import annotations

import pytest

from pullback.common.archive.sidecar import FAILED_NAMED, MORE_FAILED
from pullback.common.notify import MAX_BODY, NTFY_BODY, Notifier, NotifyConfig, NtfyConfig
from tests.helpers.http import HttpSink

pytestmark = pytest.mark.unit


@pytest.fixture
def sink():
    sink = HttpSink().start()
    yield sink
    sink.stop()


def test_a_long_body_keeps_its_head_and_tail_and_ntfy_gets_no_attachment(sink):
    """An outside attack: a client with 998 failed services made each ping's body its
    last 10,000 characters, starting inside a restic command line: the reason and the
    first warnings were gone; ntfy turned any body over 4,096 bytes into an
    attachment."""
    config = NotifyConfig(
        healthchecks=f"{sink.url}/ping",
        ntfy=NtfyConfig(f"{sink.url}/topic", None, "always"),
        gotify=None,
        timeout=5,
    )
    body = "REASON: stored with 998 failed services\n" + "w" * 50_000 + "\nLAST LOG LINE"
    assert Notifier(config, "web1").finish(False, "pullback: web1 failed", body) == []
    ping, ntfy = (r for r in sink.requests if r.method == "POST")
    for request, limit in ((ping, MAX_BODY), (ntfy, NTFY_BODY)):
        said = request.body.decode()
        assert said.startswith("REASON: stored with 998 failed services"), said[:80]
        assert said.endswith("LAST LOG LINE") and "characters cut) …" in said
        assert len(request.body) <= limit + 100, len(request.body)
    for wide in ("\U0001f600" * 30_000, "a" * 30_000):  # 4 bytes a character, and 1
        assert Notifier(config, "web1").finish(False, "t", wide) == []
        ntfy = [r for r in sink.requests if r.path == "/topic"][-1]
        assert 3_500 <= len(ntfy.body) <= NTFY_BODY, len(ntfy.body)
    short = "all well"
    assert Notifier(config, "web1").finish(True, "pullback: web1 stored", short) == []
    assert [r.body for r in sink.requests[-2:]] == [b"all well", b"all well"]


def test_a_sidecar_names_at_most_so_many_failed_services():
    from pullback.common.archive.sidecar import ArchiveInfo, ServiceReport, Sidecar
    from pullback.common.outcome import Status

    services = [ServiceReport(f"svc{n}\x1b[2J" + "x" * 300, Status.FAILED) for n in range(998)]
    info = ArchiveInfo("h-20260101T000000Z.tar.zst", 1, "0" * 64, "zstd")
    everyone = [*services, ServiceReport("ok", Status.OK)]
    sidecar = Sidecar("h", "20260101T000000Z", "", "0", Status.PARTIAL, info, everyone)
    named = sidecar.failed_services
    assert len(named) == FAILED_NAMED and named[0].startswith("svc0_")
    assert named[-1] == MORE_FAILED and "svc30_" in named[-2]
    assert all(len(name) <= 128 and "\x1b" not in name for name in named)


def test_a_snapshot_that_names_only_some_failed_services_is_no_service_s_good_one():
    """With more failed services than a snapshot names, any service may have failed in
    it: restore --service passes it over (naming it), as it does one that names it."""
    import datetime as dt

    from pullback.server.backends import Snapshot
    from pullback.server.restore import pick_snapshot
    from pullback.server.snapshots import render

    when = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    older = Snapshot("aaaa1111", when, "20261201T000000Z")
    newer = Snapshot("bbbb2222", when + dt.timedelta(days=1), "20261202T000000Z", ("a", "*"))
    chosen, why = pick_snapshot([older, newer], "latest", "web1", "unnamed")
    assert chosen is older and "newer snapshot(s) bbbb2222" in why
    chosen, why = pick_snapshot([older, newer], "bbbb", "web1", "unnamed")
    assert chosen is newer and "unnamed FAILED on the client in snapshot bbbb2222" in why
    assert "partial: a and more failed" in render([older, newer], as_json=False)


def test_a_snapshot_dated_ahead_is_not_the_newest_for_restore_or_the_drill(tmp_path):
    """An outside attack: a snapshot dated two days ahead (restic backup --time) was
    what `restore` took for the latest and what the drill proved ("LAST VERIFIED 1s
    ago" counted the forged snapshot)."""
    import datetime as dt

    from pullback.server.backends import Snapshot
    from pullback.server.drill import DrillResult, _pick
    from pullback.server.restore import pick_snapshot
    from tests.helpers.status_servers import one_host_config

    now = dt.datetime.now(dt.UTC)
    real = Snapshot("aaaa1111", now - dt.timedelta(hours=2), "20261201T000000Z")
    forged = Snapshot("ffff9999", now + dt.timedelta(days=2), "20261206T120000Z")
    chosen, why = pick_snapshot([real, forged], "latest", "web1")
    assert chosen is real and "passed over ffff9999, dated ahead" in why
    chosen, _ = pick_snapshot([real, forged], "ffff", "web1")  # named: taken as asked
    assert chosen is forged

    class Ctx:
        config = one_host_config(tmp_path)
        host = config.hosts[0]
        backend = None
        log = None

    assert _pick(Ctx, [real, forged], False, DrillResult("web1")) is real


def test_a_ping_url_s_password_is_not_printed(caplog):
    """An outside attack: ``notify.ntfy.url: http://u:NtfySecret55@host/topic``, not
    delivered, was printed whole in the warning (and so the journal and the mail)."""
    import logging

    from pullback.common.notify import _send

    with caplog.at_level(logging.WARNING):
        assert not _send("ntfy message", "http://u:NtfySecret55@127.0.0.1:9/t", None, {}, 5)
    assert "NtfySecret55" not in caplog.text
    assert "http://u:***@127.0.0.1:9/t" in caplog.text


def test_a_client_mail_that_cannot_be_made_is_not_sent_and_the_pings_still_go(tmp_path, sink):
    """helper-134 F2: the client built its failure mail outside the ``try`` that catches
    a mail not sent; a header it could not hold (a line break the schema now refuses in
    the settings) ended the run as an internal error, and the /fail ping after the mail
    never went. Now: the mail is not sent, the ping goes, both said in the problems."""
    import dataclasses

    from pullback.client import outputs
    from pullback.client.config import load_client_config

    config_file = tmp_path / "client.yaml"
    config_file.write_text(
        f"hostname: web1\narchive_dir: {tmp_path / 'a'}\nwork_dir: {tmp_path / 'w'}\n"
        f"lock_dir: {tmp_path / 'l'}\n"
        "email: {from: pb@x.test, to: [root@x.test], smtp: {host: 127.0.0.1, port: 9}}\n"
    )
    config = load_client_config(config_file)
    assert config.email is not None
    email = dataclasses.replace(config.email, subject_prefix="[pb]\n")  # (past the schema)
    config = dataclasses.replace(config, email=email)
    notifier = Notifier(NotifyConfig(f"{sink.url}/hc", None, None, 5.0), "web1")
    run = outputs.RunSummary(ok=False, duration=1.0, error="a service failed")
    assert outputs.finish(config, notifier, run) == ["mail not sent"]
    assert [r.path for r in sink.requests] == ["/hc/fail"]


@pytest.mark.parametrize("ok", [True, False])
@pytest.mark.parametrize("configured", ["none", "ping", "ntfy-failure", "gotify-always"])
def test_a_notifier_says_it_sends_exactly_when_its_finish_sends(sink, tmp_path, ok, configured):
    """A pull renders its summary only for someone who gets it (0.06 s a pull): sends()
    must be True exactly when finish() makes a request (the loopback server counts)."""
    from pullback.common.notify import GotifyConfig

    token = tmp_path / "gotify-token"
    token.write_text("t0ken\n")
    token.chmod(0o600)
    config = {
        "none": None,
        "ping": NotifyConfig(f"{sink.url}/ping", None, None, 5),
        "ntfy-failure": NotifyConfig(None, NtfyConfig(f"{sink.url}/t", None, "failure"), None, 5),
        "gotify-always": NotifyConfig(
            None, None, GotifyConfig(f"{sink.url}/g", token, 5, "always"), 5
        ),
    }[configured]
    notifier = Notifier(config, "pull")
    said = notifier.sends(ok)
    assert notifier.finish(ok, "pullback: done", "body") == []
    assert said == bool([r for r in sink.requests if r.method == "POST"])
    assert said == (
        configured in ("ping", "gotify-always") or (configured == "ntfy-failure" and not ok)
    )
