"""What ``pullback-server check`` and the summary mail say: each fact once, in words."""

from __future__ import annotations

import datetime as dt
import json
import subprocess

import pytest

from pullback.server import report
from pullback.server.check import check
from pullback.server.config import load_server_config
from pullback.server.results import HostResult, Status
from tests.helpers.sshd import free_port


def test_an_unreachable_host_is_named_once(tmp_path):
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (tmp_path / "pw").write_text("pw\n")
    (tmp_path / "pw").chmod(0o600)
    path = tmp_path / "server.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        f"ssh: {{key_file: {tmp_path / 'id'}, connect_timeout: 2s}}\n"
        f"backend: {{type: restic, repository_url: '{tmp_path}/repo/{{host}}', "
        f"password_file: {tmp_path / 'pw'}}}\n"
        f"hosts:\n  - name: web1\n    address: 127.0.0.1\n    port: {free_port()}\n"
    )
    _, problems = check(load_server_config(path))
    reach = [p for p in problems if "cannot connect" in p]
    assert reach and reach[0].startswith("web1: cannot connect to 127.0.0.1"), problems
    assert not any("web1: web1:" in p for p in problems), problems


def test_a_host_never_stored_has_no_snapshot_rather_than_one_never_old():
    now = dt.datetime(2026, 12, 2, tzinfo=dt.UTC)
    never = HostResult("web1", Status.FAILED, "unreachable", stale=True)
    stored = HostResult("web2", Status.STORED, newest_snapshot="2026-12-01T23:00:00Z")
    text, _ = report.render([never, stored], now=now)
    assert "newest snapshot: none, last verified: never" in text
    assert "never old" not in text
    assert "newest snapshot: 1h00m old (2026-12-01T23:00:00Z)" in text


def test_the_text_summary_alone_is_the_mails_text_and_compiles_no_html(monkeypatch):
    """The terminal and the pings take the text body only (``render_text``); the HTML
    template is compiled for a mail alone (about 10 ms a pull)."""
    now = dt.datetime(2026, 12, 2, tzinfo=dt.UTC)
    results = [HostResult("web1", Status.STORED, newest_snapshot="2026-12-01T23:00:00Z")]
    text, html = report.render(results, now=now)
    assert "<html" in html.lower()
    real = report._environment

    def text_only(autoescape: bool):
        assert not autoescape, "the HTML environment was asked for"
        return real(autoescape)

    monkeypatch.setattr(report, "_environment", text_only)
    assert report.render_text(results, now=now) == text


def test_secrets_below_etc_backup_are_warnings_naming_the_move(tmp_path):
    import yaml

    from pullback.server.check import suite_dir_warnings
    from pullback.server.config import load_server_config

    path = tmp_path / "server.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "backend": {
                    "type": "restic",
                    "repository_root": str(tmp_path / "repos"),
                    "password_file": "/etc/backup/restic.pass",
                },
                "ssh": {"key_file": str(tmp_path / "id"), "known_hosts": str(tmp_path / "kh")},
                "hosts": [
                    {"name": "a", "ssh_key_file": "/etc/backup/a_id"},
                    {"name": "b", "ssh_key_file": "/etc/backups/b_id"},
                ],
            }
        )
    )
    warned = suite_dir_warnings(load_server_config(path))
    assert [w.split(": ")[1] for w in warned] == [
        "backend.password_file",
        "hosts[a].ssh_key_file",
    ]
    assert warned[0].endswith(
        "/etc/backup/restic.pass lies in /etc/backup, which step 8 of the migration removes: "
        "move it first (install -D -m 0600 /etc/backup/restic.pass NEW, then point "
        "server.yaml at NEW)"
    )


def test_check_counts_ready_what_a_pull_would_take(tmp_path):
    """helper-134 F5: ``check`` counted every listed name of the host as ready, and
    named one without a sidecar the newest, where a pull passes it over; it counts and
    names what :func:`newest_usable` takes now, and says what a pull would pass over."""
    from types import SimpleNamespace

    from pullback.server.check import _say_ready
    from tests.unit.test_host_pull import A, B, entry, listing

    ctx = SimpleNamespace(name="web1", config=SimpleNamespace(state_dir=tmp_path))
    bare = {"name": "web1-20261130T115000Z.tar.zst", "size": 10}
    found = listing(entry(A), entry(B), bare, unusable=[{"name": "x", "problem": "torn"}])
    good: list[str] = []
    problems: list[str] = []
    _say_ready(ctx, found, good, problems)
    assert problems == []
    assert good[0] == f"web1: reachable, 2 archive(s) ready, newest {B}"
    assert good[1] == "web1: 1 archive(s) not offered: x: torn"
    assert good[2].startswith("web1: 1 listed archive(s) a pull would pass over: ignoring an ")


def test_check_reads_status_json_without_moving_it_and_says_once_it_cannot(tmp_path):
    """helper-138 R5: ``check`` read status.json as a pull does, which moves a damaged
    one aside (without the status lock a pull holds), and a state directory it could not
    read was "internal error ... PermissionError" for every host. Now the file stays
    where it is, the hosts are checked as with no refused archive known, and that is
    said once; a file it reads still names the archives a pull would pass over."""
    import json
    from types import SimpleNamespace

    from pullback.server.check import _say_ready
    from pullback.server.host_pull import CHECKSUM_TRIES
    from tests.unit.test_host_pull import A, B, entry, listing

    state = tmp_path / "state"
    state.mkdir()
    damaged = state / "status.json"
    damaged.write_text('{"hosts": {"web1": ')
    for bad, why in ((damaged, "not a status file"), (state / "status.json", "Is a directory")):
        if why == "Is a directory":
            damaged.unlink()
            bad.mkdir()
        good: list[str] = []
        for name in ("web1", "web2"):
            ctx = SimpleNamespace(name=name, config=SimpleNamespace(state_dir=state))
            names = [n.replace("web1", name) for n in (A, B)]
            found = listing(*(entry(n, host=name) for n in names), host=name)
            _say_ready(ctx, found, good, [])
        said = [line for line in good if "cannot be read" in line]
        assert len(said) == 1, good
        assert said[0].startswith(f"{state}/status.json cannot be read ("), said
        assert "checked as if it recorded nothing" in said[0]
        assert sum("archive(s) ready" in line for line in good) == 2, good
        assert bad.exists() and not (state / "status.json.damaged").exists()
    (state / "status.json").rmdir()
    failures = {B: CHECKSUM_TRIES}
    (state / "status.json").write_text(
        json.dumps({"hosts": {"web1": {"checksum_failures": failures}}})
    )
    good = []
    ctx = SimpleNamespace(name="web1", config=SimpleNamespace(state_dir=state))
    _say_ready(ctx, listing(entry(A), entry(B)), good, [])
    assert good[0] == f"web1: reachable, 1 archive(s) ready, newest {A}", good
    assert not any("cannot be read" in line for line in good)


def _check_config(tmp_path):
    """A server.yaml of two hosts that cannot be reached, whose repositories do not exist
    yet (``check`` reads status.json to tell whether a pull made them before)."""
    state = tmp_path / "state"
    for made in ("repos", "run", "state"):
        (tmp_path / made).mkdir()
    password = tmp_path / "pass"
    password.write_text("pw\n")
    password.chmod(0o600)
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (tmp_path / "kh").touch()
    config = tmp_path / "server.yaml"
    config.write_text(
        f"state_dir: {state}\nlock_dir: {tmp_path / 'run'}\nmin_free_space: 1M\n"
        f"backend: {{type: restic, repository_root: {tmp_path / 'repos'}, "
        f"password_file: {password}}}\n"
        f"ssh: {{key_file: {key}, known_hosts: {tmp_path / 'kh'}, connect_timeout: 2s}}\n"
        f"hosts:\n  - {{name: web1, address: 127.0.0.1, port: {free_port()}}}\n"
        f"  - {{name: web2, address: 127.0.0.1, port: {free_port()}}}\n"
    )
    return config, state


def test_check_says_an_unreadable_status_json_once_and_no_internal_error(tmp_path, capsys):
    """helper-141 F2, T3: a host whose repository does not exist yet made ``check`` read
    status.json through missing.py, which raised: "internal error while checking it:
    IsADirectoryError" (PermissionError for a user who may not read it) for every host.
    Through the real ``check``: said once, each host checked as if nothing were
    recorded, and the file left where it is."""
    from pullback.server.cli import main as server_main

    config, state = _check_config(tmp_path)
    (state / "status.json").mkdir()  # (read_status: OSError, as a state dir not readable)
    server_main(["--config", str(config), "check"])
    out, err = capsys.readouterr()
    said = out + err
    assert "internal error" not in said and "Traceback" not in said, said
    assert said.count("status.json cannot be read (Is a directory)") == 1, said
    assert said.count("will be created by the first pull") == 2, said
    assert (state / "status.json").is_dir()


@pytest.mark.parametrize("depth", [600, 100_000])
def test_a_deeply_nested_status_json_is_a_damaged_file_to_every_command(tmp_path, capsys, depth):
    """helper-141 F2: ``[[[[...`` in status.json was a RecursionError: ``status`` ended
    with exit 70 and a traceback, ``check`` said "internal error" for every host, and
    every ``pull`` crashed before recording. It is a damaged file now, as the merged
    files' reader says of theirs (one helper: jsontext.document). helper-144: 600 levels
    read well but the pull's recording (a recursive masking) failed on them: the bound
    is jsontext.MAX_DEPTH."""
    from pullback.server.cli import main as server_main

    config, state = _check_config(tmp_path)
    nested = "[" * depth + "]" * depth
    (state / "status.json").write_text(nested)
    argv = ["--config", str(config)]
    assert server_main([*argv, "status", "--check"]) == 3
    out, err = capsys.readouterr()
    assert out.startswith("PULLBACK UNKNOWN - cannot read status.json: not JSON that can be"), out
    code = server_main([*argv, "status"])
    out, err = capsys.readouterr()
    assert code not in (0, 70) and "nested " in err and "Traceback" not in err, err
    server_main([*argv, "check"])
    out, err = capsys.readouterr()
    assert "internal error" not in out + err and "Traceback" not in out + err, out + err
    assert (out + err).count("status.json cannot be read") <= 1, out + err
    assert (state / "status.json").read_text() == nested  # (check moves nothing)
    code = server_main([*argv, "pull", "--host", "web1"])
    out, err = capsys.readouterr()
    assert code == 1 and "internal error" not in out + err, (code, out, err)
    assert (state / "status.json.damaged").read_text() == nested
    recorded = json.loads((state / "status.json").read_text())
    assert recorded["hosts"]["web1"]["last_result"] == "failed"
