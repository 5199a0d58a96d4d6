"""plugins/sqlite_copy.py: what it refuses before SQLite opens a database (helper-128's
S1 and S8), and how it says a hot journal (S9)."""

import os
import sqlite3

import pytest

from pullback.plugins.sqlite_copy import NotCopied, check_companions, data_bytes, explain


def make(path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t(x)")
    db.commit()
    db.close()


def test_a_companion_that_is_no_regular_file_is_refused_before_sqlite_opens_it(tmp_path):
    db = tmp_path / "app.db"
    make(db)
    os.mkfifo(tmp_path / "app.db-journal")
    with pytest.raises(NotCopied, match=r"app\.db-journal is not a regular file"):
        check_companions(str(db))
    (tmp_path / "app.db-journal").unlink()
    (tmp_path / "app.db-wal").symlink_to("/etc/shadow")
    with pytest.raises(NotCopied, match=r"app\.db-wal is not a regular file"):
        check_companions(str(db))


def test_a_wal_s_size_is_counted_and_no_companion_is_no_problem(tmp_path):
    db = tmp_path / "app.db"
    make(db)
    assert check_companions(str(db)) == 0
    (tmp_path / "app.db-wal").write_bytes(b"w" * 5000)
    assert check_companions(str(db)) == 5000


def test_holes_are_not_data(tmp_path):
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as handle:
        handle.write(b"x" * 8192)
        handle.truncate(64 << 20)
    assert data_bytes(str(sparse)) <= 64 << 10  # (a file system's block rounding)
    full = tmp_path / "full"
    full.write_bytes(os.urandom(1 << 20))
    assert data_bytes(str(full)) == 1 << 20


def test_a_read_only_refusal_beside_a_journal_names_the_hot_journal(tmp_path):
    db = tmp_path / "app.db"
    make(db)
    refusal = sqlite3.OperationalError("attempt to write a readonly database")
    assert explain(str(db), refusal) == "attempt to write a readonly database"
    (tmp_path / "app.db-journal").write_bytes(b"j")
    assert "app.db-journal is a hot journal" in explain(str(db), refusal)


def test_the_live_copy_never_runs_code_planted_where_root_stands(tmp_path, monkeypatch):
    """The copy's child is ``python -I -m pullback.plugins.sqlite_copy`` run in ``/``:
    ``python -m`` puts its working directory first on sys.path, and PYTHONPATH is read
    from the environment, so a ``pullback`` package planted in the directory root stands
    in (another user's), or named by PYTHONPATH, would run as root (helper-131)."""
    import logging

    from pullback.common.runner import Runner
    from pullback.plugins.sqlite import _copy_live
    from pullback.plugins.task import Task

    planted = tmp_path / "planted"
    marker = tmp_path / "ran-as-root"
    (planted / "pullback" / "plugins").mkdir(parents=True)
    for init in ("pullback/__init__.py", "pullback/plugins/__init__.py"):
        (planted / init).write_text("")
    (planted / "pullback" / "plugins" / "sqlite_copy.py").write_text(
        f"open({str(marker)!r}, 'w').write('planted code ran')\n"
    )
    live = tmp_path / "live.db"
    db = sqlite3.connect(live)
    db.execute("CREATE TABLE t (x)")
    db.execute("INSERT INTO t VALUES (42)")
    db.commit()
    db.close()
    monkeypatch.chdir(planted)
    monkeypatch.setenv("PYTHONPATH", str(planted))
    log = logging.getLogger("test")
    task = Task(
        type="sqlite",
        key="sqlite",
        config={"paths": [str(live)], "busy_timeout": 5, "timeout": 60},
        service="app",
        service_file=tmp_path / "service.yaml",
        staging=tmp_path / "staging",
        runner=Runner(log),
        log=log,  # type: ignore[arg-type]
    )
    copy = tmp_path / "copy.db"
    _copy_live(task, str(live), copy)
    assert not marker.exists(), "the planted module ran"
    assert sqlite3.connect(copy).execute("SELECT x FROM t").fetchall() == [(42,)]


def test_an_io_error_reading_the_database_is_said_in_words(tmp_path, monkeypatch, capsys):
    """An ``lseek`` that failed with EIO (a failing disk) ended the copy with a Python
    traceback as the task's last line; now its words, exit 1."""
    import errno

    from pullback.plugins import sqlite_copy

    db = tmp_path / "app.db"
    sqlite3.connect(db).execute("create table t (x)").connection.close()

    def eio(*_, **__):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(sqlite_copy.sparse, "data_map", eio)
    assert sqlite_copy.main([str(db), str(tmp_path / "copy.db"), "1000"]) == 1
    said = capsys.readouterr().err
    assert said == f"cannot read {db}: Input/output error\n"
    assert not (tmp_path / "copy.db").exists()
