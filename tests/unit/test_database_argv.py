"""The command lines the database tasks build: a database name is never an option nor
a connection string (helper-133, F10)."""

from __future__ import annotations

from pullback.plugins import mariadb, postgresql


def test_a_mariadb_name_follows_the_end_of_the_options():
    argv = mariadb.dump_argv("mariadb-dump", ["--user=root"], ["--skip-lock-tables"], "--x=/y")
    assert argv[argv.index("--databases") :] == ["--databases", "--", "--x=/y"]
    # the task's options first, then no DROP DATABASE whatever they said (F14)
    assert argv.index("--skip-lock-tables") < argv.index("--skip-add-drop-database")


def test_a_postgresql_name_is_passed_as_a_quoted_dbname():
    assert postgresql.dbname("shop") == "dbname='shop'"
    assert postgresql.dbname("host=evil o'b\\x") == "dbname='host=evil o\\'b\\\\x'"
    assert postgresql.dump_argv([], "-x") == ["pg_dump", "-Fc", "--", "dbname='-x'"]


def test_a_dump_naming_another_database_is_found(tmp_path):
    dump = tmp_path / "live1.sql"
    lines = [
        b"-- MariaDB dump\n",
        b"/*!40000 DROP DATABASE IF EXISTS `live1`*/;\n",
        b"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `live1` /*!40100 DEFAULT CHARACTER SET x */;\n",
        b"USE `live1`;\n",
        b"DELIMITER ;;\n",
        b"CREATE DATABASE other;;\n",  # a routine's body: not the dump's own statement
        b"DELIMITER ;\n",
    ]
    dump.write_bytes(b"".join(lines))
    assert mariadb.other_database(dump, "live1") is None
    renamed = b"".join(mariadb.renaming(lines, "live1", "live1_restored_x"))
    assert b"DROP DATABASE IF EXISTS `live1_restored_x`" in renamed
    assert b"`live1`" not in renamed
    dump.write_bytes(b"".join([*lines, b"USE `mysql`;\n"]))
    assert mariadb.other_database(dump, "live1") == 8


def test_a_restore_to_another_server_refuses_what_a_task_cannot_honour():
    """helper-133 F11, F12: never a restore into the live server instead."""
    from pullback.client.restore import server_problems

    mongo = {"uri", "host", "port", "username", "password_file"}
    said = server_problems("mongodb", {"uri": "mongodb://live"}, mongo, {"host": "db2"})
    assert said and "cannot replace the uri" in said[0]
    assert server_problems("mongodb", {"host": "db1"}, mongo, {"host": "db2", "user": "u"}) == []
    maria = {"host", "hostname", "port", "socket", "user", "password_file"}
    said = server_problems("mariadb", {"socket": "/run/s"}, maria, {"port": 3307})
    assert said and "--hostname 127.0.0.1" in said[0]
    assert server_problems("mariadb", {}, maria, {"host": "127.0.0.1", "port": 3307}) == []
    influx = {"host", "token_file", "org"}
    said = server_problems("influxdb", {}, influx, {"port": 1, "password_file": "/p"})
    assert [s.split(":")[1].split()[0] for s in said] == ["--port", "--password-file"]


def test_one_database_that_cannot_be_dumped_costs_only_itself():
    """helper-133 F1-F3: the others are dumped (and archived), each failure a kept
    warning, and the task fails all the same (TaskPartial: helper-138 saw nothing
    alert on a missing database); TaskError when no database could be dumped."""
    import logging
    from types import SimpleNamespace

    import pytest

    from pullback.plugins._common import each_database
    from pullback.plugins.task import TaskError, TaskPartial

    def dump_one(name: str) -> None:
        if name.startswith("bad"):
            raise TaskError(f"dump of {name} failed: gone")
        done.append(name)

    task = SimpleNamespace(log=logging.getLogger("t"), stats=SimpleNamespace(warnings=[]))
    task.warn = task.stats.warnings.append  # (Task.warn logs it too, within its bound)
    done: list[str] = []
    with pytest.raises(TaskPartial, match=r"^1 of 3 databases could not be dumped "):
        each_database(task, ["a", "bad1", "c"], dump_one)
    assert done == ["a", "c"]
    assert task.stats.warnings == ["dump of bad1 failed: gone; it is not in this archive"]
    with pytest.raises(TaskError, match=r"dump of bad1 failed: gone \(and 1 more"):
        each_database(task, ["bad1", "bad2"], dump_one)
