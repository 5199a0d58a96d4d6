"""The command runner, on whichever sh this interpreter has (1.x on Debian, 2.x on PyPI)."""

from __future__ import annotations

import contextlib
import logging
import os
import time

import pytest

from pullback.common import secrets
from pullback.common.errors import CommandError, CommandTimeout
from pullback.common.runner import Runner


@pytest.fixture
def runner():
    return Runner(logging.getLogger("pullback.test"))


def test_output_is_streamed_to_the_log(runner, caplog):
    caplog.set_level(logging.INFO, logger="pullback.test")
    result = runner.run(["sh", "-c", "echo one; echo two >&2"])
    assert result.exit_code == 0
    assert "sh: one" in caplog.text and "sh: two" in caplog.text
    assert "running: sh -c 'echo one; echo two >&2'" in caplog.text


def test_failure_raises_with_exit_code_and_tail(runner):
    script = "for i in $(seq 1 30); do echo line$i; done; exit 3"
    with pytest.raises(CommandError) as info:
        runner.run(["sh", "-c", script])
    error = info.value
    assert error.exit_code_of_command == 3
    assert error.tail[-1] == "line30" and len(error.tail) == 20
    assert "exited with code 3" in str(error) and "| line30" in str(error)


def test_a_commands_output_is_logged_up_to_a_bound_and_its_tail_kept(runner, caplog):
    """A plugin's command printing 300 000 lines wrote a 19 MB log (an outside walk)."""
    from pullback.common.runner import MAX_LOGGED_LINES

    caplog.set_level(logging.INFO, logger="pullback.test")
    script = f"seq 1 {MAX_LOGGED_LINES + 5000}; exit 3"
    with pytest.raises(CommandError) as info:
        runner.run(["sh", "-c", script])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sh: ")]
    assert len(lines) == MAX_LOGGED_LINES + 1
    assert lines[-1] == (
        f"sh: (its output past {MAX_LOGGED_LINES} lines is not logged; its last 20 lines "
        "are kept for an error)"
    )
    assert info.value.tail[-1] == str(MAX_LOGGED_LINES + 5000)


def test_ok_codes(runner):
    assert runner.run(["sh", "-c", "exit 1"], ok_codes=(0, 1)).exit_code == 1


def test_timeout_kills_the_whole_process_group(runner, tmp_path):
    pidfile = tmp_path / "child.pid"
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as info:
        runner.run(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], timeout=0.5)
    assert time.monotonic() - started < 10
    assert "timed out after 0.5s" in str(info.value)
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the grandchild survived the timeout")


def test_secrets_are_masked_in_the_command_line_output_and_error(caplog):
    caplog.set_level(logging.DEBUG, logger="pullback.test")
    runner = Runner(logging.getLogger("pullback.test"), secrets=["s3cr3t-pass"])
    with pytest.raises(CommandError) as info:
        runner.run(["sh", "-c", "echo the password is s3cr3t-pass; exit 1", "s3cr3t-pass"])
    assert "s3cr3t-pass" not in str(info.value)
    assert "s3cr3t-pass" not in caplog.text
    assert "the password is ******" in caplog.text


def test_globally_registered_secrets_are_masked(runner, caplog):
    caplog.set_level(logging.INFO, logger="pullback.test")
    secrets.register("gl0bal-token")
    runner.run(["echo", "gl0bal-token"])
    assert "gl0bal-token" not in caplog.text


def test_stdout_to_a_file_bypasses_the_log(runner, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pullback.test")
    target = tmp_path / "out.bin"
    runner.run(["sh", "-c", "head -c 300000 /dev/zero; echo note >&2"], stdout=target)
    assert target.stat().st_size == 300000
    assert "sh: note" in caplog.text


def test_environment_and_cwd(runner, tmp_path):
    target = tmp_path / "env.txt"
    runner.run(["sh", "-c", 'echo "$FOO $(pwd)"'], env={"FOO": "bar"}, cwd=tmp_path, stdout=target)
    assert target.read_text() == f"bar {tmp_path}\n"


def test_stdin_is_not_inherited(runner, tmp_path):
    target = tmp_path / "in.txt"
    runner.run(["cat"], stdout=target, timeout=10)  # would hang if stdin were a live pipe
    assert target.read_text() == ""


def test_command_not_found(runner):
    with pytest.raises(CommandError, match="no-such-program-xyz: command not found"):
        runner.run(["no-such-program-xyz", "--help"])


def test_killed_by_signal(runner):
    with pytest.raises(CommandError, match="killed by SIGKILL"):
        runner.run(["sh", "-c", "kill -9 $$"])


def test_an_endless_line_costs_a_bounded_line(runner):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    script = "head -c 200000000 /dev/zero | tr '\\0' x >&2; echo >&2; echo after >&2"
    result = runner.run(["sh", "-c", script])
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    assert grown < 50 << 20, f"the runner kept {grown} bytes of one line"
    assert result.tail[0] == "x" * 4000 + " … (line cut)"
    assert result.tail[-1] == "after"


NO_PROC_SCRIPT = """
import logging, sys
from pullback.common.errors import CommandError
from pullback.common.runner import Runner
try:
    Runner(logging.getLogger("t")).run(["true"])
except CommandError as exc:
    print(str(exc))
    sys.exit(1)
print("ran")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a mount namespace needs root")
def test_a_child_that_cannot_start_without_proc_is_a_command_error_not_a_traceback():
    """An outside attack ran the client with /proc unmounted: ``sh`` lists /proc/self/fd
    in the child, and its ForkException left the run with a traceback (exit 70)."""
    from tests.helpers.namespaces import in_mount_namespace

    done = in_mount_namespace("umount -l /proc", NO_PROC_SCRIPT)
    assert done.returncode == 1, done.stdout + done.stderr
    said = done.stdout.strip()
    assert said.startswith("command failed: true: "), said
    assert "(is /proc mounted? pullback starts programs only with /proc)" in said
    assert "Traceback" not in done.stdout + done.stderr and len(said) < 400, said


def test_a_commands_last_lines_are_kept_escaped(runner):
    """An outside attack: a hostile copy store's HTTP status line (restic prints it)
    carried an OSC 52 clipboard write and cursor moves into the copy's report, the
    maintenance mail and status.json, through the error's tail."""
    with pytest.raises(CommandError) as info:
        runner.run(["sh", "-c", r"printf '400 Bad\033]52;c;eA==\a\033[2JRequest\r\n' >&2; exit 1"])
    assert info.value.tail == [r"400 Bad\x1b]52;c;eA==\x07\x1b[2JRequest\r"]
    assert "\x1b" not in str(info.value) and "\a" not in str(info.value)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:  # a zombie not yet reaped is gone too
        return handle.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_what_a_dump_leaves_running_is_ended_and_what_a_start_leaves_is_not(
    runner, caplog, tmp_path
):
    """helper-128's S14 asked for the first; helper-131 saw the second (a ``post``
    command that starts the application with ``app &``) killed by the first mend."""
    caplog.set_level(logging.WARNING, logger="pullback.test")
    started = []
    for leftovers in (False, True):
        pidfile = tmp_path / f"pid-{leftovers}"
        runner.run(
            ["sh", "-c", f"sleep 60 >/dev/null 2>&1 & echo $! > {pidfile}"], leftovers=leftovers
        )
        started.append(int(pidfile.read_text()))
    time.sleep(0.2)
    try:
        assert _alive(started[0]), "a command that starts something keeps it running"
        assert not _alive(started[1]), "a dump's leftover is ended"
        assert caplog.text.count("left processes running in its process group") == 1
    finally:
        for pid in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


def test_waiting_for_a_command_leaves_no_descriptor_open(runner):
    """wait polls each command's pidfd (its end seen as it comes): the descriptor is
    closed after an exit, a failure and a time-out alike."""

    def open_pidfds() -> set[str]:
        """The pidfds this process holds (sh's own pipes close in its threads, later)."""
        found = set()
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if "pidfd" in os.readlink(f"/proc/self/fd/{fd}"):  # (pidfs: "pidfd:[N]")
                    found.add(fd)
        return found

    before = open_pidfds()
    for _ in range(5):
        assert runner.run(["sleep", "0.06"]).exit_code == 0
    with pytest.raises(CommandError):
        runner.run(["sh", "-c", "sleep 0.06; exit 3"])
    with pytest.raises(CommandTimeout):
        runner.run(["sleep", "5"], timeout=0.2)
    assert open_pidfds() - before == set()
