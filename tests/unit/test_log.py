"""Log lines: times and levels on a terminal, syslog priorities under journald, no secrets."""

from __future__ import annotations

import os
import subprocess
import sys

from pullback.common import log, secrets

SCRIPT = """
from pullback.common import log, secrets
secrets.register("pa55word-xyz")
log.setup(0)
logger = log.get_logger("x")
logger.info("hello pa55word-xyz")
logger.warning("careful")
logger.debug("hidden at verbosity 0")
"""


HOSTILE = """
from pullback.common import log
log.setup(0)
logger = log.get_logger("x")
logger.warning("[web1] %s", "evil" + chr(10) + "[web2] stored " + chr(27) + "[2J")
try:
    raise ValueError("boom" + chr(10) + "[web2] stored " + chr(27) + "[2J")
except ValueError:
    logger.error("with a traceback:", exc_info=True)
"""


def run(env_extra: dict, script: str = SCRIPT) -> str:
    env = dict(os.environ, **env_extra)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    ).stderr


def test_terminal_lines_have_time_and_level():
    lines = run({"JOURNAL_STREAM": ""}).splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("INFO    hello ******")
    assert lines[1].endswith("WARNING careful")
    assert lines[0][2] == ":" and lines[0][5] == ":"  # HH:MM:SS


def test_journal_lines_carry_priorities_and_no_time(tmp_path):
    # journald is detected from JOURNAL_STREAM naming the device and inode of stderr
    stderr_file = tmp_path / "stderr"
    with open(stderr_file, "w") as handle:
        st = os.fstat(handle.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        subprocess.run([sys.executable, "-c", SCRIPT], stderr=handle, env=env, check=True)
    assert stderr_file.read_text().splitlines() == ["<6>hello ******", "<4>careful"]


def test_tail_handler_keeps_recent_masked_lines():
    tail = log.setup(-1)
    secrets.register("tail-secret-1")
    log.get_logger("t").debug("debug with tail-secret-1")
    assert tail.lines[-1].endswith("debug with ******")


def test_a_message_is_one_line_whatever_it_quotes():
    out = run({"JOURNAL_STREAM": ""}, HOSTILE)
    assert "[web1] evil\\n[web2] stored \\x1b[2J" in out
    assert "\x1b" not in out
    assert not any(line.startswith("[web2]") for line in out.splitlines())
    assert "Traceback (most recent call last):" in out.splitlines()  # tracebacks span lines
    # an exception's words are escaped too (its own line breaks stay)
    assert "\x1b" not in out and not any(line.startswith("[web2]") for line in out.splitlines())
