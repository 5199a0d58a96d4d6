"""The stage order (docs/architecture.md, *Plugin stages*), seen through a recording
third-party plugin."""

from __future__ import annotations

import tarfile
import textwrap
from pathlib import Path

import pytest

from pullback.client.services import load_service
from pullback.client.stages import run_service
from pullback.common import signals
from pullback.common.archive.writer import ArchiveWriter
from pullback.common.signals import SignalGuard
from pullback.plugins.manager import load_plugins

TEST_PLUGINS = Path(__file__).parent.parent / "plugins"


@pytest.fixture(scope="module")
def plugins():
    return load_plugins([TEST_PLUGINS], entry_points=False)


def run(tmp_path, plugins, text):
    path = tmp_path / "svc" / "service.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(textwrap.dedent(text).replace("LOG", str(tmp_path / "calls")))
    path.chmod(0o600)
    service = load_service(path, plugins)
    assert not service.problems, service.problems
    archive = tmp_path / "h-20260101T000000Z.tar"
    with ArchiveWriter(archive, "none") as writer:
        report = run_service(service, plugins, writer, tmp_path / "staging", SignalGuard())
        writer.finish()
    calls = (tmp_path / "calls").read_text().split()
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    return report, calls, names


def test_prepares_then_dumps_then_finishes_in_reverse(tmp_path, plugins):
    report, calls, names = run(
        tmp_path,
        plugins,
        """\
        service: {name: svc}
        command: {pre: ["echo pre >> LOG"], dump: ["echo dump >> LOG"], post: ["echo post >> LOG"]}
        record: {log: LOG, label: rec, write: rec.sql}
        """,
    )
    assert calls == [
        "rec:validate",
        "pre",
        "rec:prepare",
        "dump",
        "rec:dump",
        "rec:finish",
        "failed=False",
        "post",
    ]
    assert report.status == "ok"
    assert "services/svc/record/rec.sql" in names


def test_failed_dump_is_discarded_and_finish_still_runs(tmp_path, plugins):
    report, calls, names = run(
        tmp_path,
        plugins,
        """\
        service: {name: svc}
        command:
          pre: ["echo pre >> LOG"]
          post: ["echo post >> LOG"]
          dump: ["echo ok > good.txt"]
        record: {log: LOG, label: rec, write: rec.sql, fail: [dump]}
        """,
    )
    assert calls[-3:] == ["rec:finish", "failed=True", "post"]
    assert report.status == "failed"
    assert "record: dump failed: dump failed on purpose" in report.error
    assert "services/svc/command/good.txt" in names  # the good task is kept
    assert not any("record" in n for n in names)  # no half-written dump


def test_failed_prepare_skips_every_dump_but_finishes_what_was_prepared(tmp_path, plugins):
    report, calls, _ = run(
        tmp_path,
        plugins,
        """\
        service: {name: svc}
        command: {pre: ["echo pre >> LOG"], post: ["echo post >> LOG"], dump: ["echo d >> LOG"]}
        record: {log: LOG, label: rec, fail: [prepare]}
        """,
    )
    assert calls == ["rec:validate", "pre", "rec:prepare", "rec:finish", "failed=True", "post"]
    assert report.status == "failed"
    assert [t.status for t in report.tasks] == ["skipped", "failed"]


def test_failed_validate_runs_nothing(tmp_path, plugins):
    report, calls, _ = run(
        tmp_path,
        plugins,
        """\
        service: {name: svc}
        record: {log: LOG, label: rec, fail: [validate]}
        """,
    )
    assert calls == ["rec:validate"]
    assert report.error == "record: told to fail validation"


def test_failing_finish_marks_the_service_failed(tmp_path, plugins):
    report, _, _ = run(
        tmp_path,
        plugins,
        """\
        service: {name: svc}
        command: {post: ["exit 4"]}
        record: {log: LOG, label: rec}
        """,
    )
    assert report.status == "failed"
    assert "command: finish failed" in report.error and "exited with code 4" in report.error


@pytest.mark.parametrize(
    ("stopping", "said"),
    [
        (None, "SIGINT received; stopping"),
        (signals.RESTORING, "SIGINT received; stopping after restoring what was stopped"),
        (signals.KEPT_FOR_NEXT_PULL, "SIGINT received; stopping; a download in progress is kept"),
    ],
    ids=["plain", "client", "pull"],
)
def test_a_signal_is_said_in_the_words_of_the_program_it_stops(stopping, said):
    """Found by a newcomer: an interrupted pull said the client's words ("stopping after
    restoring what was stopped"), though a pull stops no service."""
    import logging
    import os
    import signal

    from pullback.common.errors import Interrupted
    from pullback.common.log import get_logger

    said_now: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: said_now.append(record.getMessage())  # type: ignore[method-assign]
    get_logger().addHandler(handler)
    try:
        with pytest.raises(Interrupted), SignalGuard(*([stopping] if stopping else [])):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # (the handler runs between bytecodes of this thread)
                pass
    finally:
        get_logger().removeHandler(handler)
    assert any(line.startswith(said) for line in said_now), said_now
