"""The progress display as a person at a terminal sees it (a real pseudo-terminal), and
its absence everywhere else (a pipe, as under cron; the journal is not a terminal)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys

import pytest

from tests.helpers.fleet import Fleet


@pytest.fixture
def fleet(tmp_path):
    fleet = Fleet(tmp_path)
    yield fleet
    fleet.stop()


def on_a_terminal(argv: list[str], timeout: float = 120) -> tuple[int, str]:
    """Run ``argv`` with its standard error on a pseudo-terminal; (exit code, what the
    terminal received)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    seen = bytearray()
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            proc.kill()
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    return proc.wait(), seen.decode("utf-8", "replace")


def test_a_pull_shows_each_host_on_one_status_line_only_on_a_terminal(fleet):
    host = fleet.add_host("web1")
    host.make_archive({"blob.bin": os.urandom(20 << 20)})
    argv = [sys.executable, "-m", "pullback.server.cli", "--config", str(fleet.config), "pull"]
    code, terminal = on_a_terminal(argv)
    assert code == 0, terminal
    assert "\r\x1b[Kweb1: fetch " in terminal  # bytes of the total, rate, time left
    assert " of " in terminal and "/s" in terminal
    assert "[web1] stored" in terminal
    # every log line starts on a cleared line, so no status text is left inside one
    for line in terminal.replace("\r\n", "\n").split("\n"):
        if "stored:" in line:
            assert line.startswith("\r\x1b[K") or "web1: fetch" not in line

    host.make_archive({"more.bin": os.urandom(1 << 20)})
    piped = fleet.server("pull")  # standard error is a pipe: log lines only
    assert piped.returncode == 0, piped.stderr
    assert "\x1b" not in piped.stderr and "\r" not in piped.stderr


def test_a_client_run_and_a_restore_from_an_archive_show_their_progress(fleet, tmp_path):
    host = fleet.add_host("web1")
    (host.data / "blob.bin").write_bytes(os.urandom(20 << 20))
    client = [sys.executable, "-m", "pullback.client.cli", "--config", str(host.client.config)]
    code, terminal = on_a_terminal([*client, "run"])
    assert code == 0, terminal
    assert "\r\x1b[Kpack " in terminal and "/s" in terminal
    (archive,) = host.client.published()
    target = tmp_path / "restored"
    restore = ["restore", "--service", "app", "--from", str(archive), "--target", str(target)]
    code, terminal = on_a_terminal([*client, *restore])
    assert code == 0, terminal
    assert "\r\x1b[Kunpack " in terminal and " of " in terminal
    assert (target / str(host.data).lstrip("/") / "blob.bin").stat().st_size == 20 << 20
