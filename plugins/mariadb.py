"""The ``mariadb`` task (alias ``mysql``): ``mariadb-dump --single-transaction`` per
database, and the ``mariadb`` client on the way back."""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

from ..common.archive.dumps import database_of, file_name
from ..common.errors import CommandError
from ..common.secrets import read_secret_file
from ..common.text import printable
from . import hookimpl, load_plugin_schema
from ._common import (
    DatabaseRestore,
    absent,
    each_database,
    extra_options,
    first,
    forget_private,
    private_file,
    probing,
    renamed,
    timeout,
    tool_said,
)
from .task import Requirement, RestorePlan, Task, TaskError, TaskType

SYSTEM_SCHEMAS = {"information_schema", "performance_schema", "sys"}
_TABLES_SQL = (
    "SELECT HEX(table_name), table_type FROM information_schema.tables "
    "WHERE CAST(table_schema AS BINARY) = {schema}"
)
_SESSIONS_SQL = (
    "SELECT COUNT(*) FROM information_schema.processlist "
    "WHERE CAST(db AS BINARY) = {schema} AND id <> CONNECTION_ID()"
)
TABLE_KINDS = {"BASE TABLE", "SYSTEM VERSIONED"}
"""The tables a RENAME TABLE moves whole, a system-versioned one with its history."""
_LOCK_WAIT = "SET SESSION lock_wait_timeout = 60; "
"""Before a statement that changes a live database: wait a minute for a lock, then fail
(and change nothing) instead of waiting for the application and running much later."""
_TRIGGERS_SQL = (
    "SELECT COUNT(*) FROM information_schema.triggers "
    "WHERE CAST(trigger_schema AS BINARY) = {schema}"
)
_OTHERS_SQL = (
    "SELECT (SELECT COUNT(*) FROM information_schema.routines "
    "WHERE CAST(routine_schema AS BINARY) = {schema})"
    " + (SELECT COUNT(*) FROM information_schema.triggers "
    "WHERE CAST(trigger_schema AS BINARY) = {schema})"
    " + (SELECT COUNT(*) FROM information_schema.events "
    "WHERE CAST(event_schema AS BINARY) = {schema})"
)
SKIP_DROP = "--skip-add-drop-database"
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
            restores_below_target=True,
        )
    ]


def _tool(*names: str) -> str:
    return next((n for n in names if shutil.which(n)), names[0])


GLOBAL_OPTION_FILES = ("/etc/my.cnf", "/etc/mysql/my.cnf")
"""The system-wide option files the client tools read (socket path, character set)."""


def credentials_file(task: Task, global_files: tuple[str, ...] = GLOBAL_OPTION_FILES) -> str:
    """The text of the option file pullback hands the tools (``--defaults-file``) when the
    task names its credentials: the system-wide files, the task's ``defaults_file``, then
    its password. Being the only file read, it keeps root's ``~/.my.cnf`` (read after any
    ``--defaults-extra-file``, so it would win) from replacing the task's credentials."""
    config = task.config
    lines = [f"!include {path}" for path in global_files if os.path.isfile(path)]
    if config.get("defaults_file"):
        lines.append(f"!include {config['defaults_file']}")
    if config.get("password_file"):
        password = read_secret_file(config["password_file"])
        escaped = password.replace("\\", "\\\\").replace('"', '\\"')
        lines += ["[client]", f'password="{escaped}"']
    return "\n".join(lines) + "\n"


def _options(task: Task) -> list[str]:
    """Connection options; the defaults file must come first, as the tools demand. With
    no credentials of its own the task uses the tools' usual files (root's ``~/.my.cnf``:
    the client unit sets ``HOME=/root``)."""
    config = task.config
    options: list[str] = []
    if config.get("password_file") or config.get("defaults_file"):
        own = private_file(task, "my.cnf", credentials_file(task))
        options.append(f"--defaults-file={own}")
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


def client_argv(task: Task, options: list[str]) -> list[str]:
    """The ``mariadb`` client with the connection ``options`` and the task's
    ``connect_timeout`` (the client waits for ever by default: an outside attack saw
    ``check`` and a restore's preflight hang on a server that accepted and never
    answered). mariadb-dump has no such option; its ``timeout`` bounds it. The
    character set is utf8mb4 whatever the locale (under C or POSIX the client spoke
    latin1, and a name such as ``café`` in pullback's own queries, its ``X'...'``
    literals UTF-8, was another name: helper-138)."""
    return [
        _tool("mariadb", "mysql"),
        *options,
        f"--connect-timeout={task.config['connect_timeout']}",
        "--default-character-set=utf8mb4",
    ]


def _explain(exc: CommandError, what: str) -> TaskError:
    text = " ".join(exc.tail)
    if "Access denied" in text:
        hint = "the server refused the credentials (check defaults_file or password_file)"
    elif "Can't connect" in text or "Connection refused" in text:
        hint = "cannot reach the server (check host, port or socket, and that it runs)"
    elif "Lost connection" in text or "timed out" in text:
        hint = f"the server did not answer in time ({exc.tail[-1] if exc.tail else exc.reason})"
    elif "Unknown database" in text:
        hint = exc.tail[-1]
    else:
        hint = exc.tail[-1] if exc.tail else exc.reason
    return TaskError(f"{what}: {hint}")


_SCHEMAS_SQL = "SELECT HEX(schema_name) FROM information_schema.schemata"
"""Every database, each name in hexadecimal: ``SHOW DATABASES`` in ``--batch`` escapes a
backslash, newline and tab (an outside attack: ``app\\x`` was taken as ``app\\\\x``,
and no database was dumped)."""


def schemas(task: Task, options: list[str], timeout: float = 300) -> list[str]:
    """Every database of the server, its name as it is. Raises CommandError."""
    rows = _query(task, options, _SCHEMAS_SQL, timeout=timeout)
    return [bytes.fromhex(row).decode("utf-8", "surrogateescape") for row in rows]


def databases(task: Task, options: list[str]) -> list[str]:
    """The databases the task dumps: those it names, or with ``all: true`` every one but
    the server's own schemas. Raises TaskError when they cannot be listed."""
    if not task.config["all"]:
        value = task.config["database"]
        return [value] if isinstance(value, str) else list(value)
    try:
        names = schemas(task, options)
    except CommandError as exc:
        raise _explain(exc, "cannot list the databases") from None
    return sorted(n for n in names if n not in SYSTEM_SCHEMAS)


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


def dump_argv(dump: str, options: list[str], extra: list[str], name: str) -> list[str]:
    """The mariadb-dump command line of the database ``name``: connection ``options``,
    pullback's own, the task's ``extra`` ones, then ``--`` before the name, so that a
    name is never read as an option (an outside attack: a database named
    ``--result-file=/etc/passwd`` made the dump truncate that file as root). Whatever
    ``extra`` or an option file says, the dump holds no ``DROP DATABASE``
    (:data:`SKIP_DROP` comes after them): a restore never runs one from a dump."""
    return [dump, *options, *DUMP_OPTIONS, *extra, SKIP_DROP, "--databases", "--", name]


@hookimpl
def pullback_dump(task: Task):
    try:
        options = _options(task)
        dump = _tool("mariadb-dump", "mysqldump")
        argv = partial(dump_argv, dump, options, extra_options(task))
        each_database(task, databases(task, options), lambda name: _dump_one(task, argv, name))
    finally:
        forget_private(task)


def _dump_one(task: Task, argv: Callable[[str], list[str]], name: str) -> None:
    """mariadb-dump of the database ``name`` into the staging directory. Raises
    TaskError."""
    target = task.staging / file_name(name, ".sql")
    try:
        task.run(argv(name), stdout=target, timeout=timeout(task))
    except CommandError as exc:
        target.unlink(missing_ok=True)
        raise _explain(exc, f"dump of {name} failed") from None
    task.log.info("dumped database %s (%d bytes)", name, target.stat().st_size)


@hookimpl
def pullback_probe(task: Task):
    """Log in as a dump would; warn when a restore could not create a database."""
    with probing(task, _explain) as result:
        options = _options(task)
        names = databases(task, options)
        result.problems += absent(names, schemas(task, options))
        result.problems += _unreadable_routines(task, options, names)
        if not _can_create(_query(task, options, "SHOW GRANTS")):
            result.warnings.append(
                "the user may not create databases (CREATE on *.*): a restore could not "
                "bring a database back; grant it, or restore with --username of one who can"
            )
    return result


def _sql_literal(text: str) -> str:
    """``text`` as a hexadecimal literal of its UTF-8 bytes, ``X'...'``, compared with a
    column cast to binary: read alike in every sql_mode and collation. A quoted
    ``'a\\\\b'`` meant ``a\\b`` in one sql_mode and ``a\\\\b`` under
    NO_BACKSLASH_ESCAPES (an outside attack: --replace then found no table, moved
    nothing, dropped the restored copy and exited 0)."""
    return "X'" + text.encode("utf-8", "surrogateescape").hex().upper() + "'"


_UNREADABLE_SQL = (
    "SELECT CONCAT(ROUTINE_SCHEMA, '.', ROUTINE_NAME, ' (', DEFINER, ')') "
    "FROM information_schema.ROUTINES WHERE ROUTINE_DEFINITION IS NULL "
    "AND CAST(ROUTINE_SCHEMA AS BINARY) IN ({schemas}) ORDER BY 1 LIMIT 4"
)


def _unreadable_routines(task: Task, options: list[str], names: list[str]) -> list[str]:
    """The routines of ``names`` whose text the user may not read: ``mariadb-dump
    --routines`` fails on them (an outside walk saw ``check`` say ok for a user granted
    ALL on its database, whose next dump failed on a procedure root had defined)."""
    if not names:
        return []
    schemas = ", ".join(_sql_literal(name) for name in names)
    found = _query(task, options, _UNREADABLE_SQL.format(schemas=schemas))
    if not found:
        return []
    shown = ", ".join(printable(row, 120) for row in found[:3]) + (" ..." if len(found) > 3 else "")
    return [
        f"the user may not read the routines {shown}, so mariadb-dump --routines would "
        "fail; grant it SELECT on mysql.proc (MariaDB 11.3 and later: SHOW CREATE "
        "ROUTINE), or dump as their definer or root"
    ]


def _query(
    task: Task, options: list[str], sql: str, database: str = "", timeout: float = 300
) -> list[str]:
    """Run one statement, for ``timeout`` seconds at most; return its rows. Raises
    CommandError."""
    out = task.staging / ".query-out"
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [*client_argv(task, options), "--batch", "--skip-column-names"]
    try:
        chosen = ["--", database] if database else []
        task.run([*argv, "--execute", sql, *chosen], stdout=out, level=10, timeout=timeout)
        return [line for line in out.read_text(errors="replace").splitlines() if line]
    finally:
        out.unlink(missing_ok=True)


def _can_create(grants: list[str]) -> bool:
    """Whether ``SHOW GRANTS`` lets the user create any database."""
    for grant in grants:
        match = re.match(r"GRANT (.+?) ON \*\.\* TO", grant)
        if match and re.search(r"ALL PRIVILEGES|(^|, )CREATE(,|$)", match.group(1)):
            return True
    return False


_DEFINER = re.compile(rb"DEFINER=`((?:[^`]|``)*)`(?:@`((?:[^`]|``)*)`)?")
"""``DEFINER=`user`@`host``` or, for a role, ``DEFINER=`role```."""
_CHUNK = 1 << 20


def definers(dump: Path) -> set[str]:
    """The ``user@host`` (or role) of every ``DEFINER=`` clause in a dump (views,
    triggers, routines, events), read through once in chunks."""
    found: set[str] = set()
    tail = b""
    with open(dump, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            window = tail + chunk
            for match in _DEFINER.finditer(window):
                user, host = (
                    (g or b"").replace(b"``", b"`").decode(errors="replace") for g in match.groups()
                )
                found.add(f"{user}@{host}" if match.group(2) is not None else user)
            tail = window[-600:]  # a clause cut by the chunk's end is seen whole next time
    return found


MAX_BLOCK = 16 << 20
"""Bytes of one trigger, routine or event read whole; a longer one is not checked but
refused (the dump's own work is a few kilobytes each)."""


def self_reference(dump: Path, name: str) -> int | None:
    """The line of ``dump`` where a trigger, routine, event or view names the database
    ``name`` itself (``inv.items``, ```inv`.`items```, ``"inv".items``, the name and its
    dot on two lines or with a comment between), or None. mariadb-dump keeps a
    trigger's, routine's and event's text as written, between ``DELIMITER ;;`` lines; a
    view it writes with its tables unqualified, so a qualified name there is a function
    of that database (data never lies in either). Loaded beside the live database, such
    a trigger was created on the live table (an outside walk saw a restore "beside"
    change the live ``inv`` and say it was untouched). The text is searched as it is:
    a name inside a string or a comment counts too (an outside attack hid the name from
    a reader of strings behind a comment holding an apostrophe, and behind the quoting
    rules of ANSI_QUOTES and NO_BACKSLASH_ESCAPES); such a dump is restored by hand.
    SQL built at run time (``PREPARE ... FROM CONCAT(...)``) cannot be seen."""
    quoted = re.escape(_ident(name).encode())
    plain = re.escape(name.encode()) if re.fullmatch(r"[A-Za-z0-9_$]+", name) else None
    double = re.escape(b'"' + name.replace('"', '""').encode() + b'"')
    either = quoted + b"|" + double + (b"|" + plain if plain else b"")
    between = rb"(?:\s|/\*.*?\*/)*"  # blanks and comments between the name and its dot
    pattern = re.compile(rb"(?<![\w$`.])(?:" + either + rb")" + between + rb"\.", re.DOTALL)
    block: list[bytes] | None = None
    start = size = 0
    with open(dump, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if line.startswith(b"DELIMITER "):
                text = b"".join(block or [])
                if block is not None and (found := pattern.search(text)):
                    return start + text.count(b"\n", 0, found.start())
                block = [] if line.strip() != b"DELIMITER ;" else None
                start, size = number + 1, 0
            elif block is not None:
                size += len(line)
                if size > MAX_BLOCK:
                    return start
                block.append(line)
            elif line.startswith(b"/*!50001 VIEW ") and pattern.search(line):
                return number
    return None


def _can_act_as_others(grants: list[str]) -> bool:
    """Whether ``SHOW GRANTS`` lets the user give an object another definer."""
    for grant in grants:
        match = re.match(r"GRANT (.+?) ON \*\.\* TO", grant)
        if match and re.search(r"ALL PRIVILEGES|SUPER|SET USER", match.group(1)):
            return True
    return False


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


_NAMING = (b"CREATE DATABASE ", b"USE ", b"/*!40000 DROP DATABASE ", b"DROP DATABASE ")
"""The starts of the dump's lines that name a database: mariadb-dump's ``CREATE
DATABASE``, ``USE`` and, with ``--add-drop-database``, ``/*!40000 DROP DATABASE IF
EXISTS `name`*/;``."""
_NAMED = re.compile(
    rb"(?:CREATE DATABASE (?:/\*!32312 IF NOT EXISTS\*/ )?|USE |(?:/\*!40000 )?DROP DATABASE "
    rb"(?:IF EXISTS )?)(`(?:[^`]|``)+`)"
)


def renaming(lines, old: str, new: str):
    """The dump's lines, its ``CREATE DATABASE``, ``USE`` and ``DROP DATABASE`` of
    ``old`` naming ``new``: mariadb-dump writes every statement on lines of its own
    (newlines in values are escaped), so a line that starts a statement is one. (A
    ``DROP DATABASE`` left as it was dropped the live database in a restore "beside",
    an outside attack.)"""
    quoted_old, quoted_new = _ident(old).encode(), _ident(new).encode()
    for line in lines:
        if line.startswith(_NAMING) and quoted_old in line:
            line = line.replace(quoted_old, quoted_new, 1)
        yield line


def other_database(dump: Path, name: str) -> int | None:
    """The line of ``dump`` where, outside a trigger's, routine's or event's block, a
    ``CREATE DATABASE``, ``USE`` or ``DROP DATABASE`` names a database other than
    ``name`` (or one pullback cannot read), or None. :func:`renaming` renames only
    ``name``'s: such a dump (``--all-databases`` in dump_options, or an edited file)
    would act on the other database as it is live."""
    wanted = _ident(name).encode()
    inside = False
    with open(dump, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if line.startswith(b"DELIMITER "):
                inside = line.strip() != b"DELIMITER ;"
            elif not inside and line.startswith(_NAMING):
                match = _NAMED.match(line)
                if match is None or match[1] != wanted:
                    return number
    return None


_CREATE = re.compile(
    rb"CREATE DATABASE /\*!32312 IF NOT EXISTS\*/ (`(?:[^`]|``)+`) "
    rb"/\*!40100 (DEFAULT CHARACTER SET [A-Za-z0-9_]+(?: COLLATE [A-Za-z0-9_]+)?) \*/"
    rb"[^\n]*;\n"  # (MySQL 8's /*!80016 DEFAULT ENCRYPTION='N' */, MariaDB's COMMENT '...')
)
CREATE_LINES = 100
"""The dump's ``CREATE DATABASE`` is looked for in its first lines (mariadb-dump writes
it after about 20 lines of header)."""


def create_options(dump: Path, name: str) -> str:
    """The default character set and collation of the database ``name`` that the dump's
    ``CREATE DATABASE`` line names, as `` DEFAULT CHARACTER SET latin1 COLLATE
    latin1_swedish_ci``; "" when its first :data:`CREATE_LINES` lines have none."""
    wanted = _ident(name).encode()
    with open(dump, "rb") as lines:
        for _, line in zip(range(CREATE_LINES), lines, strict=False):
            match = _CREATE.fullmatch(line)
            if match and match[1] == wanted:
                return " " + match[2].decode()
    return ""


def _table_row(row: str) -> tuple[str, str]:
    """A row of :data:`_TABLES_SQL`: the table's name (sent in hexadecimal, as --batch
    would escape a backslash, tab or newline in it) and its kind."""
    name, kind = row.split("\t")
    return bytes.fromhex(name).decode("utf-8", "surrogateescape"), kind


class _Restore(DatabaseRestore):
    """One task's restore: the preflight, then each database beside or over the live one."""

    suffix = ".sql"

    def __init__(self, task: Task, source: Path, plan: RestorePlan):
        super().__init__(task, source, plan)
        self.options = _options(task)
        self.charsets: dict[str, str] = {}
        """Each database's default character set and collation, as its dump names them."""

    def preflight(self) -> list[str]:
        """What would stop the restore, found before anything is changed."""
        problems = []
        for dump in self.dumps:
            problems += self._incomplete(dump)
        try:
            grants = _query(self.task, self.options, "SHOW GRANTS")
            user = _query(self.task, self.options, "SELECT CURRENT_USER()")[0]
            live = set(schemas(self.task, self.options))
        except CommandError as exc:
            return [*problems, str(_explain(exc, "cannot log in"))]
        if not _can_create(grants):
            problems.append(
                "the user may not create databases (CREATE on *.*), and a restore creates "
                "one; grant it or restore with --username of a user who can (e.g. root)"
            )
        for dump in self.dumps:
            problems += self._names_taken(database_of(dump, ".sql"), live)
            problems += self._names_itself(dump, database_of(dump, ".sql"), live)
            problems += self._names_another(dump, database_of(dump, ".sql"))
            if self.plan.replace and database_of(dump, ".sql") in live:
                problems += self._history_lost(database_of(dump, ".sql"))
            others = definers(dump) - {user}
            if others and not _can_act_as_others(grants):
                problems.append(
                    f"{dump.name} defines views, triggers or routines for "
                    f"{', '.join(sorted(others)[:3])}, which needs the SET USER (or SUPER) "
                    "privilege; grant it or restore with --username of a user who has it"
                )
        return problems

    def _names_taken(self, name: str, live: set[str]) -> list[str]:
        """The names this restore would create that exist already, and, for --replace, a
        live database in use (its DROP or RENAME would wait for the application)."""
        problems = []
        words = ("restored", "before_restore") if self.plan.replace else ("restored",)
        for taken in (renamed(name, word, self.plan.stamp, 64) for word in words):
            if taken in live:
                problems.append(f"a database {taken} exists already; try again")
        safety = self._safety_copy(name, Path("/nonexistent"))
        if self.plan.replace and safety.exists():
            problems.append(f"{safety} exists already; try again")
        if self.plan.replace and name in live:
            literal = _sql_literal(name)
            sessions = _query(self.task, self.options, _SESSIONS_SQL.format(schema=literal))
            if sessions and sessions[0] != "0":
                problems += self.plan.sessions_problem(
                    self.task.log,
                    f"{sessions[0]} session(s) are using {name}: stop the application "
                    "(a docker or systemd task of the service does) and try again",
                )
        return problems

    def _names_itself(self, dump: Path, name: str, live: set[str]) -> list[str]:
        """A dump whose triggers, routines or events name its database: loaded under
        another name while the live one is there, they would act on the live one."""
        line = self_reference(dump, name) if name in live else None
        if line is None:
            return []
        fresh = renamed(name, "restored", self.plan.stamp, 64)
        return [
            f"{dump.name} line {line}: a trigger, routine, event or view names the database "
            f"{name} itself; loaded as {fresh} it would act on the live {name} (a trigger "
            "would be created on its tables), so nothing is restored. Restore it by hand "
            "over the live database (docs/restore.md, MariaDB dumps that name their database)"
        ]

    def _safety_copy(self, name: str, default: Path) -> Path:
        """Where ``--replace`` keeps a copy of the live database ``name``: in the plan's
        safety directory (else ``default``), named as the dumps are (:func:`file_name`:
        a ``/`` is percent-encoded), so never outside it (an outside attack: a database
        named ``../../../tmp/x`` had root write its copy there)."""
        before = renamed(name, "before_restore", self.plan.stamp, 64)
        return (self.plan.safety_dir or default) / file_name(before, ".sql")

    def _names_another(self, dump: Path, name: str) -> list[str]:
        """A dump that creates, uses or drops a database other than its own
        (:func:`other_database`): only its own is renamed, so it would change another
        live one."""
        line = other_database(dump, name)
        if line is None:
            return []
        return [
            f"{dump.name} line {line}: a CREATE DATABASE, USE or DROP DATABASE names "
            f"another database than {name} (or one pullback cannot read); loaded, it "
            "would change that live database, so nothing is restored. Restore it by hand"
        ]

    def _incomplete(self, dump: Path) -> list[str]:
        """A dump that mariadb-dump did not finish: its closing comment is missing. (A dump
        made with --skip-comments has none to check: said, not refused.)"""
        with open(dump, "rb") as handle:
            head = handle.read(4096)
            handle.seek(max(0, dump.stat().st_size - 4096))
            tail = handle.read()
        if b"-- Dump completed" in tail:
            return []
        if b"-- MariaDB dump" not in head and b"-- MySQL dump" not in head:
            self.plan.note(self.task.log, f"{dump.name} has no comments: its end is not checked")
            return []
        return [f"{dump.name} does not end as a complete mariadb-dump does (no 'Dump completed')"]

    def _sql(self, sql: str, what: str) -> None:
        try:
            _query(self.task, self.options, _LOCK_WAIT + sql, timeout=600)
        except CommandError as exc:
            raise TaskError(f"{what} failed: {tool_said(exc)}") from None

    def _load(self, dump: Path, name: str, into: str) -> None:
        """Feed ``dump`` (made of ``name``) to the client, into the database ``into``.
        Raises CommandError."""
        argv = client_argv(self.task, self.options)
        if name == into:
            self.task.run(argv, stdin=dump, timeout=timeout(self.task))
            return
        read_end, write_end = os.pipe2(os.O_CLOEXEC)

        def feed() -> None:
            try:
                with open(dump, "rb") as lines, os.fdopen(write_end, "wb") as pipe:
                    for line in renaming(lines, name, into):
                        pipe.write(line)
            except BrokenPipeError:
                pass  # the client stopped; its exit status says why

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            with os.fdopen(read_end, "rb") as stdin:
                self.task.run(argv, stdin=stdin, timeout=timeout(self.task))
        finally:
            feeder.join()

    def _base_tables_only(self, name: str) -> list[str] | None:
        """The tables of ``name`` when it holds nothing but base tables (then a rename can
        move it whole), else None."""
        schema = _sql_literal(name)
        tables = _query(self.task, self.options, _TABLES_SQL.format(schema=schema))
        others = _query(self.task, self.options, _OTHERS_SQL.format(schema=schema))
        rows = [_table_row(row) for row in tables]
        if others != ["0"] or any(kind not in TABLE_KINDS for _, kind in rows):
            return None
        return [table for table, _ in rows]

    def _history_lost(self, name: str) -> list[str]:
        """A live database holding a system-versioned table and triggers: ``--replace``
        would copy it aside with mariadb-dump, which keeps only the current rows, then
        drop it (an outside attack: the table's history was gone for good, and the note
        said what it held was kept)."""
        tables = _query(self.task, self.options, _TABLES_SQL.format(schema=_sql_literal(name)))
        versioned = [t for t, kind in map(_table_row, tables) if kind == "SYSTEM VERSIONED"]
        if not versioned or not self._triggers(name):
            return []
        shown = ", ".join(printable(table, 64) for table in versioned[:3])
        return [
            f"{name} holds system-versioned tables ({shown}) and triggers: --replace would "
            "copy it aside without the tables' history (a table with a trigger cannot be "
            "renamed aside), then drop it, so nothing is restored. Restore beside (without "
            "--replace) and move the tables by hand with RENAME TABLE, which keeps history"
        ]

    def restore_database(self, dump: Path) -> None:
        name = database_of(dump, ".sql")
        fresh = renamed(name, "restored", self.plan.stamp, 64)
        log = self.task.log
        options = create_options(dump, name)
        what = f"create the database {fresh}{' with' if options else ''}{options}"
        if self.plan.step(log, f"{what} and load {dump.name} into it"):
            # (a character set the server lacks fails here as the dump's own line would)
            self._sql(f"CREATE DATABASE {_ident(fresh)}{options}", f"creating {fresh}")
            self.charsets[name] = options
            try:
                self._load(dump, name, fresh)
            except CommandError as exc:
                self._sql(f"DROP DATABASE IF EXISTS {_ident(fresh)}", f"removing {fresh}")
                raise TaskError(
                    f"loading {dump.name} failed, nothing live was touched: {tool_said(exc)}"
                ) from None
        if self.plan.replace:
            self._swap(dump, name, fresh)
        else:
            self.plan.note(
                log,
                f"{name} is restored as {fresh}; the live {name} is untouched. To swap it in, "
                f"restore again with --replace (or move the tables with RENAME TABLE)",
            )

    def _swap(self, dump: Path, name: str, fresh: str) -> None:
        log = self.task.log
        live = name in set(schemas(self.task, self.options))
        before = renamed(name, "before_restore", self.plan.stamp, 64)
        new_tables = None if self.plan.dry_run else self._base_tables_only(fresh)
        old_tables = [] if not live else None if self.plan.dry_run else self._base_tables_only(name)
        if new_tables is not None and old_tables is not None:
            self._rename_swap(name, fresh, before, (old_tables, new_tables))
            return
        safety = self._safety_copy(name, dump.parent)
        if live and not self._triggers(name):
            self._aside_swap(dump, name, (fresh, before), safety)
            return
        # triggers (a table with one cannot be renamed into another database): the live
        # database is copied aside whole, then replaced by a second load of the proven dump
        if live and self.plan.step(log, f"copy the live {name} to {safety} (mariadb-dump)"):
            self._copy_aside(name, safety)
        if self.plan.step(log, f"replace {name} by the restored copy", destructive=live):
            self._alone(name, f"{name} is unchanged, a copy of it is in {safety}", fresh)
            where = f"what {name} held is in {safety} (load it with: mariadb < {safety})"
            self._drop_and_load(dump, name, fresh, where)
            if live:
                self.plan.note(
                    log,
                    f"{name} is restored; what it held is kept in {safety} (as it was when "
                    f"copied: a row written to {name} since then is not in it)",
                )

    def _aside_swap(self, dump: Path, name: str, names: tuple[str, str], safety: Path) -> None:
        """Replace the live ``name`` (views, routines or events beside its tables) by the
        dump, losing nothing: its definitions are copied to ``safety`` (mariadb-dump),
        then its tables move to ``before`` in one RENAME TABLE, every row written until
        then with them (an outside attack: a row written after the copy, when the
        database was dropped, was lost, and the note said what it held was kept), a
        versioned table's history too. ``names`` are the restored copy's and
        ``before``. Raises TaskError."""
        fresh, before = names
        log = self.task.log
        if self.plan.step(log, f"copy the live {name} to {safety} (mariadb-dump)"):
            self._copy_aside(name, safety)
        what = f"move the tables of {name} to {before}, then load {dump.name} into {name}"
        if not self.plan.step(log, what, destructive=True):
            return
        self._alone(name, f"{name} is unchanged, a copy of it is in {safety}", fresh)
        schema = _sql_literal(name)
        rows = map(_table_row, _query(self.task, self.options, _TABLES_SQL.format(schema=schema)))
        tables = [table for table, kind in rows if kind in TABLE_KINDS]
        self._sql(f"CREATE DATABASE {_ident(before)}", f"creating {before}")
        moves = [f"{_ident(name)}.{_ident(t)} TO {_ident(before)}.{_ident(t)}" for t in tables]
        if moves:
            try:
                self._sql("RENAME TABLE " + ", ".join(moves), f"moving the tables of {name}")
            except TaskError as exc:
                self._sql(f"DROP DATABASE {_ident(before)}", f"removing the empty {before}")
                raise TaskError(
                    f"{exc}; {name} is unchanged; the restored copy is in {fresh}"
                ) from None
        kept = f"its tables are kept in {before}, its views, routines and events in {safety}"
        self._drop_and_load(dump, name, fresh, kept)
        self.plan.note(
            log, f"{name} is restored; {kept} (the tables with every row written until the swap)"
        )

    def _triggers(self, name: str) -> bool:
        """Whether the database ``name`` has triggers."""
        sql = _TRIGGERS_SQL.format(schema=_sql_literal(name))
        return _query(self.task, self.options, sql) != ["0"]

    def _alone(self, name: str, where: str, fresh: str) -> None:
        """Raise TaskError, changing nothing, when a session uses ``name`` now (one that
        connected since the preflight): dropping it would lose what it writes."""
        count = _query(self.task, self.options, _SESSIONS_SQL.format(schema=_sql_literal(name)))
        if count and count[0] != "0":
            raise TaskError(
                f"{count[0]} session(s) are using {name} since the preflight: nothing more "
                f"is changed; {where}, the restored copy is in {fresh}. Stop the "
                "application and restore again"
            )

    def _drop_and_load(self, dump: Path, name: str, fresh: str, where: str) -> None:
        """Drop the live ``name``, load ``dump`` into it, drop the restored copy
        ``fresh``; ``where`` says where what ``name`` held is. Raises TaskError."""
        try:  # waits a minute at most for the application's locks
            self._sql(f"DROP DATABASE IF EXISTS {_ident(name)}", f"removing the live {name}")
        except TaskError as exc:
            raise TaskError(
                f"{exc} (is an application using it?); {where}; the restored copy is in {fresh}"
            ) from None
        try:
            self._load(dump, name, name)
        except CommandError as exc:
            raise TaskError(
                f"loading {dump.name} into {name} failed: {tool_said(exc)}; {where}; "
                f"the restored copy is in {fresh}"
            ) from None
        except BaseException:  # interrupted: say where everything is, then stop
            self.plan.note(
                self.task.log,
                f"interrupted while replacing {name}: {where}; the restored copy is in {fresh}",
            )
            raise
        self._sql(f"DROP DATABASE {_ident(fresh)}", f"removing {fresh}")

    def _rename_swap(self, name: str, fresh: str, before: str, tables) -> None:
        """One RENAME TABLE statement moves the live tables aside and the restored ones in:
        atomic, so a failure changes nothing."""
        old, new = tables
        log = self.task.log
        moves = [f"{_ident(name)}.{_ident(t)} TO {_ident(before)}.{_ident(t)}" for t in old]
        moves += [f"{_ident(fresh)}.{_ident(t)} TO {_ident(name)}.{_ident(t)}" for t in new]
        what = f"swap: the tables of {name} -> {before}, those of {fresh} -> {name}"
        if not self.plan.step(log, what, destructive=bool(old)):
            return
        options = self.charsets.get(name, "")
        self._sql(f"CREATE DATABASE IF NOT EXISTS {_ident(name)}{options}", f"creating {name}")
        self._sql(f"CREATE DATABASE {_ident(before)}", f"creating {before}")
        if moves:
            self._sql("RENAME TABLE " + ", ".join(moves), "the swap")
        if options:  # (a live database keeps its own defaults through IF NOT EXISTS)
            self._sql(f"ALTER DATABASE {_ident(name)}{options}", f"setting {name}'s defaults")
        if _query(self.task, self.options, _TABLES_SQL.format(schema=_sql_literal(fresh))):
            raise TaskError(  # (never drop what was believed moved: it is the restore)
                f"after the swap {fresh} still holds tables: nothing more is changed; see "
                f"{name}, {before} and {fresh}"
            )
        self._sql(f"DROP DATABASE {_ident(fresh)}", f"removing the emptied {fresh}")
        if old:
            self.plan.note(log, f"{name} is restored; the tables it replaced are kept in {before}")
        else:
            self._sql(f"DROP DATABASE {_ident(before)}", f"removing the unused {before}")

    def _copy_aside(self, name: str, safety: Path) -> None:
        """Dump the live database to ``safety``, a new file (never one that exists: it
        may be what an earlier restore kept), readable by root only. Raises TaskError."""
        safety.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        dump = _tool("mariadb-dump", "mysqldump")
        try:
            fd = os.open(safety, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise TaskError(f"{safety} exists already, nothing was changed; try again") from None
        try:
            with os.fdopen(fd, "wb") as out:
                self.task.run(
                    dump_argv(dump, self.options, [], name),
                    stdout=out,
                    timeout=timeout(self.task),
                )
        except CommandError as exc:
            raise TaskError(
                f"copying the live {name} aside failed, nothing was changed: {tool_said(exc)}"
            ) from None


@hookimpl
def pullback_restore(task: Task, source: Path, target: Path | None, dry_run: bool, plan):
    """Each database comes back beside the live one (``<name>_restored_<stamp>``), or, with
    ``--replace`` and after a preflight, in its place: by one atomic RENAME TABLE when both
    hold only tables (the live tables kept in ``<name>_before_restore_<stamp>``), else after
    copying the live database aside with mariadb-dump."""
    if target is not None:
        task.log.warning(
            "--target does not apply to databases: restoring into the server "
            "named in the service file (or by --hostname)"
        )
    try:
        _Restore(task, source, plan).run()
    finally:
        forget_private(task)
