"""The ``postgresql`` task: ``pg_dump -Fc`` per database, ``pg_dumpall --globals-only``,
and ``pg_restore`` on the way back."""

from __future__ import annotations

import os
from pathlib import Path

from ..common.errors import CommandError
from ..common.secrets import read_secret_file
from . import hookimpl, load_plugin_schema
from ._common import (
    extra_options,
    file_name,
    first,
    forget_private,
    private_file,
    timeout,
)
from .task import Requirement, Task, TaskError, TaskType

GLOBALS = "globals.sql"
LIST_SQL = (
    "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname"
)


@hookimpl
def pullback_task_types():
    return [
        TaskType(
            "postgresql",
            load_plugin_schema("postgresql"),
            description="PostgreSQL databases (pg_dump -Fc)",
            requires=(Requirement(("pg_dump",), "apt install postgresql-client"),),
        )
    ]


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def _env(task: Task) -> dict[str, str]:
    config = task.config
    env = {
        "PGPORT": str(config["port"]),
        "PGCONNECT_TIMEOUT": str(config["connect_timeout"]),
        "PGAPPNAME": "pullback",
    }
    host = first(config, "host", "hostname")
    user = first(config, "user", "username")
    if host:
        env["PGHOST"] = host
    if user:
        env["PGUSER"] = user
    if config.get("password_file"):
        password = read_secret_file(config["password_file"])
        env["PGPASSFILE"] = str(
            private_file(task, "pgpass", f"*:*:*:*:{_pgpass_escape(password)}\n")
        )
    return env


def _explain(exc: CommandError, what: str) -> TaskError:
    text = " ".join(exc.tail)
    if "password authentication failed" in text:
        hint = "the server refused the password (check password_file or ~/.pgpass)"
    elif "Connection refused" in text or "could not connect" in text:
        hint = "cannot reach the server (check host and port, and that it is running)"
    elif "does not exist" in text:
        hint = exc.tail[-1] if exc.tail else "it does not exist"
    elif "timeout expired" in text:
        hint = "the server did not answer within connect_timeout"
    else:
        hint = exc.tail[-1] if exc.tail else exc.reason
    return TaskError(f"{what}: {hint}")


def databases(task: Task, env: dict[str, str]) -> list[str]:
    config = task.config
    if config["all"]:
        listing = task.staging / ".databases"
        try:
            task.run(
                ["psql", "-X", "-A", "-t", "-d", "postgres", "-c", LIST_SQL],
                env=env,
                stdout=listing,
                timeout=300,
            )
        except CommandError as exc:
            raise _explain(exc, "cannot list the databases") from None
        names = [n for n in listing.read_text().splitlines() if n]
        listing.unlink()
        return names
    value = config["database"]
    return [value] if isinstance(value, str) else list(value)


@hookimpl
def pullback_validate(task: Task):
    config = task.config
    problems = []
    if config["all"] == ("database" in config):
        problems.append("name the database (database: NAME or a list), or set all: true")
    if "host" in config and "hostname" in config:
        problems.append("give host or hostname, not both")
    if "user" in config and "username" in config:
        problems.append("give user or username, not both")
    return problems


@hookimpl
def pullback_plan(task: Task):
    names = (
        "every database"
        if task.config["all"]
        else ", ".join(
            [task.config["database"]]
            if isinstance(task.config["database"], str)
            else task.config["database"]
        )
    )
    where = first(task.config, "host", "hostname", default="the local socket")
    lines = [f"pg_dump -Fc {names} on {where} port {task.config['port']}"]
    if task.config["globals"]:
        lines.append("pg_dumpall --globals-only (roles, tablespaces)")
    return lines


@hookimpl
def pullback_dump(task: Task):
    env = _env(task)
    try:
        names = databases(task, env)
        if task.config["globals"]:
            _dump_globals(task, env)
        for name in names:
            target = task.staging / file_name(name, ".dump")
            try:
                task.run(
                    ["pg_dump", "-Fc", "-f", target, *extra_options(task), "--", name],
                    env=env,
                    timeout=timeout(task),
                )
            except CommandError as exc:
                raise _explain(exc, f"pg_dump of {name} failed") from None
            task.log.info("dumped database %s (%d bytes)", name, target.stat().st_size)
    finally:
        forget_private(task)


def _dump_globals(task: Task, env: dict[str, str]) -> None:
    target = task.staging / GLOBALS
    command: list[str | os.PathLike] = ["pg_dumpall", "--globals-only", "-f", target]
    try:
        task.run(command, env=env, timeout=timeout(task))
    except CommandError as exc:
        if "permission denied" not in " ".join(exc.tail):
            raise _explain(exc, "pg_dumpall --globals-only failed") from None
        task.log.warning("not a superuser: roles are dumped without their passwords")
        try:
            task.run(
                [*command[:2], "--no-role-passwords", *command[2:]], env=env, timeout=timeout(task)
            )
        except CommandError as again:
            raise _explain(again, "pg_dumpall --globals-only failed") from None


@hookimpl
def pullback_restore(task: Task, source: Path, target: Path | None, dry_run: bool):
    """Roles first (errors for existing ones are expected), then every database is dropped
    and created again from its dump (``pg_restore --create --clean --if-exists``)."""
    if target is not None:
        task.log.warning(
            "--target does not apply to databases: restoring into the server "
            "named in the service file"
        )
    env = _env(task)
    try:
        globals_sql = source / GLOBALS
        dumps = sorted(source.glob("*.dump"))
        if not dumps:
            raise TaskError(f"no *.dump files in {source}")
        if globals_sql.exists():
            if dry_run:
                task.log.info("would load roles from %s", globals_sql)
            else:
                task.run(
                    ["psql", "-X", "-q", "-d", "postgres", "-f", globals_sql],
                    env=env,
                    timeout=timeout(task),
                )
        for dump in dumps:
            if dry_run:
                task.log.info("would recreate the database in %s with pg_restore", dump.name)
                continue
            try:
                task.run(
                    [
                        "pg_restore",
                        "--create",
                        "--clean",
                        "--if-exists",
                        "--exit-on-error",
                        "-d",
                        "postgres",
                        dump,
                    ],
                    env=env,
                    timeout=timeout(task),
                )
            except CommandError as exc:
                raise _explain(exc, f"pg_restore of {dump.name} failed") from None
            task.log.info("restored %s", dump.name)
    finally:
        forget_private(task)
