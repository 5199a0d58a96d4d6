"""The ``mariadb`` task (alias ``mysql``): ``mariadb-dump --single-transaction`` per
database, and the ``mariadb`` client on the way back."""

from __future__ import annotations

import shutil
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

SYSTEM_SCHEMAS = {"information_schema", "performance_schema", "sys"}
DUMP_OPTIONS = [
    "--single-transaction",
    "--routines",
    "--events",
    "--triggers",
    "--hex-blob",
    "--default-character-set=utf8mb4",
]


@hookimpl
def pullback_task_types():
    return [
        TaskType(
            "mariadb",
            load_plugin_schema("mariadb"),
            aliases=("mysql",),
            description="MariaDB/MySQL databases (mariadb-dump)",
            requires=(Requirement(("mariadb-dump", "mysqldump"), "apt install mariadb-client"),),
        )
    ]


def _tool(*names: str) -> str:
    return next((n for n in names if shutil.which(n)), names[0])


def _options(task: Task) -> list[str]:
    """Connection options; the defaults file must come first, as the tools demand."""
    config = task.config
    options: list[str] = []
    if config.get("password_file"):
        password = read_secret_file(config["password_file"])
        escaped = password.replace("\\", "\\\\").replace('"', '\\"')
        extra = private_file(task, "my.cnf", f'[client]\npassword="{escaped}"\n')
        if config.get("defaults_file"):
            extra.write_text(f"!include {config['defaults_file']}\n" + extra.read_text())
        options.append(f"--defaults-extra-file={extra}")
    elif config.get("defaults_file"):
        options.append(f"--defaults-extra-file={config['defaults_file']}")
    host = first(config, "host", "hostname")
    user = first(config, "user", "username")
    if host:
        options.append(f"--host={host}")
    if config.get("port"):
        options.append(f"--port={config['port']}")
    if config.get("socket"):
        options.append(f"--socket={config['socket']}")
    if user:
        options.append(f"--user={user}")
    return options


def _explain(exc: CommandError, what: str) -> TaskError:
    text = " ".join(exc.tail)
    if "Access denied" in text:
        hint = "the server refused the credentials (check defaults_file or password_file)"
    elif "Can't connect" in text or "Connection refused" in text:
        hint = "cannot reach the server (check host, port or socket, and that it runs)"
    elif "Unknown database" in text:
        hint = exc.tail[-1]
    else:
        hint = exc.tail[-1] if exc.tail else exc.reason
    return TaskError(f"{what}: {hint}")


def databases(task: Task, options: list[str]) -> list[str]:
    if not task.config["all"]:
        value = task.config["database"]
        return [value] if isinstance(value, str) else list(value)
    listing = task.staging / ".databases"
    try:
        task.run(
            [
                _tool("mariadb", "mysql"),
                *options,
                "--batch",
                "--skip-column-names",
                "--execute",
                "SHOW DATABASES",
            ],
            stdout=listing,
            timeout=300,
        )
    except CommandError as exc:
        raise _explain(exc, "cannot list the databases") from None
    names = [n for n in listing.read_text().splitlines() if n and n not in SYSTEM_SCHEMAS]
    listing.unlink()
    return names


@hookimpl
def pullback_validate(task: Task):
    config = task.config
    problems = []
    if config["all"] == ("database" in config):
        problems.append("name the database (database: NAME or a list), or set all: true")
    for key in ("defaults_file",):
        if config.get(key) and not Path(config[key]).is_file():
            problems.append(f"{key} {config[key]} does not exist")
    return problems


@hookimpl
def pullback_plan(task: Task):
    names = "every database" if task.config["all"] else task.config["database"]
    return [f"{_tool('mariadb-dump', 'mysqldump')} --single-transaction {names}"]


@hookimpl
def pullback_dump(task: Task):
    try:
        options = _options(task)
        dump = _tool("mariadb-dump", "mysqldump")
        for name in databases(task, options):
            target = task.staging / file_name(name, ".sql")
            try:
                task.run(
                    [dump, *options, *DUMP_OPTIONS, *extra_options(task), "--databases", name],
                    stdout=target,
                    timeout=timeout(task),
                )
            except CommandError as exc:
                raise _explain(exc, f"dump of {name} failed") from None
            task.log.info("dumped database %s (%d bytes)", name, target.stat().st_size)
    finally:
        forget_private(task)


@hookimpl
def pullback_restore(task: Task, source: Path, target: Path | None, dry_run: bool):
    """Each ``<database>.sql`` is fed to the ``mariadb`` client; it recreates its tables."""
    if target is not None:
        task.log.warning(
            "--target does not apply to databases: restoring into the server "
            "named in the service file"
        )
    dumps = sorted(source.glob("*.sql"))
    if not dumps:
        raise TaskError(f"no *.sql files in {source}")
    try:
        options = _options(task)
        for dump in dumps:
            if dry_run:
                task.log.info("would load %s into the server", dump.name)
                continue
            try:
                task.run([_tool("mariadb", "mysql"), *options], stdin=dump, timeout=timeout(task))
            except CommandError as exc:
                raise _explain(exc, f"loading {dump.name} failed") from None
            task.log.info("restored %s", dump.name)
    finally:
        forget_private(task)
