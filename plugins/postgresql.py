"""The ``postgresql`` task: ``pg_dump -Fc`` per database, ``pg_dumpall --globals-only``, and
a restore that never destroys what it cannot rebuild.

Every tool runs as ``run_as`` when set (``runuser``): on a stock Debian PostgreSQL, local
connections use peer authentication, so ``run_as: postgres`` with no ``user`` dumps and
restores as the ``postgres`` superuser while pullback runs as root. Dumps go to standard
output and restores read standard input, so that user never needs access to pullback's
directories.

A restore puts each database beside the live one, as ``<name>_restored_<stamp>``, and says
how to swap it in. ``--replace`` swaps it in itself, after a preflight (every dump readable
to its end, the role may create databases and owns the live ones, no session is connected)
and in one transaction of two renames: the live database becomes
``<name>_before_restore_<stamp>``, the restored one takes its name. A failure at any point
leaves a working database under the live name. Roles the server has are never changed:
of ``globals.sql`` only the roles it lacks are created (:mod:`.pg_globals`).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..common.archive.dumps import database_of, file_name
from ..common.errors import CommandError
from ..common.secrets import read_secret_file
from ..common.text import printable
from ..common.units import parse_duration
from . import hookimpl, load_plugin_schema, pg_database
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
from .pg_globals import only_new
from .task import Requirement, RestorePlan, Task, TaskError, TaskType

GLOBALS = "globals.sql"
LIST_SQL = (
    "SELECT json_agg(datname ORDER BY datname) FROM pg_database "
    "WHERE datallowconn AND NOT datistemplate"
)
"""The databases ``all: true`` dumps, as one JSON array: a name may hold a newline (an
outside attack: ``evil<LF>shop`` was read as two names, and no database was dumped)."""
ALL_SQL = {
    "databases": "SELECT json_agg(datname) FROM pg_database",
    "roles": "SELECT json_agg(rolname) FROM pg_roles",
    "tablespaces": "SELECT json_agg(spcname) FROM pg_tablespace",
}
"""Every name of a kind, as one JSON array (see :data:`LIST_SQL`)."""
ROLE_SQL = (
    "SELECT rolsuper, rolcreatedb OR rolsuper, rolcreaterole OR rolsuper "
    "FROM pg_roles WHERE rolname = current_user"
)
SESSIONS_SQL = (
    # One JSON array a session (its words cannot break the line): what it is, then who.
    # A role that is not a superuser (nor pg_read_all_stats) sees no backend_type of other
    # roles' sessions; an autovacuum worker it still tells by its lack of a role. Before
    # PostgreSQL 10 (no backend_type: to_jsonb reads a column that may be missing) the
    # worker's query began "autovacuum:".
    "SELECT json_build_array(kind, application_name, usename, host(client_addr)) FROM "
    "(SELECT a.*, coalesce(to_jsonb(a) ->> 'backend_type', CASE WHEN a.usesysid IS NULL "
    "OR a.query LIKE 'autovacuum:%' THEN 'autovacuum worker' END) AS kind "
    "FROM pg_stat_activity a) s WHERE kind IS DISTINCT FROM 'autovacuum worker' "
    "AND pid <> pg_backend_pid() AND datname IN ({names}) ORDER BY pid"
)
RENAME_ATTEMPTS = 3
"""Tries of a swap refused for autovacuum workers alone."""
SESSIONS_SHOWN = 3
"""Sessions named in a message; the others are counted."""


@hookimpl
def pullback_task_types():
    return [
        TaskType(
            "postgresql",
            load_plugin_schema("postgresql"),
            description="PostgreSQL databases (pg_dump -Fc)",
            requires=(Requirement(("pg_dump",), "apt install postgresql-client"),),
            restores_below_target=True,
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
        # run_as: the tools run as that user, who must read the file
        reader = _uid(config["run_as"]) if config.get("run_as") else None
        line = f"*:*:*:*:{_pgpass_escape(password)}\n"
        passfile = private_file(task, "pgpass", line, reader=reader)
        env["PGPASSFILE"] = str(passfile)
    return env


def _uid(user: str) -> int:
    import pwd

    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise TaskError(f"run_as: there is no user {user!r} on this machine") from None


def dbname(name: str) -> str:
    """The connection string ``dbname='NAME'`` for the database ``name`` (backslash and
    quote escaped as libpq reads them). The tools take a database argument holding ``=``
    or beginning ``postgresql://`` for a connection string: a database named
    ``host=elsewhere.example`` made pg_dump connect to that host, offering it the
    task's password (the private pgpass file matches every host). Inside a connection
    string the ``dbname`` is a name, never read again."""
    return "dbname='" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _explain(exc: CommandError, what: str) -> TaskError:
    text = " ".join(exc.tail)
    if "password authentication failed" in text:
        hint = "the server refused the password (check password_file or ~/.pgpass)"
    elif "Peer authentication failed" in text:
        hint = (
            "peer authentication refused the connection (the local socket checks the "
            "system user, not a password): on a stock Debian PostgreSQL set run_as: "
            "postgres (and no user), or give a user with a password_file and host: "
            "localhost (a password is checked over TCP)"
        )
    elif 'role "' in text and "does not exist" in text:
        hint = f"{tool_said(exc, 1)} (set user:, or run_as: postgres for peer authentication)"
    elif "no password supplied" in text:
        hint = (
            "no password for this connection (give password_file, or a ~/.pgpass line for "
            "this host, port and user whose database field is *: pullback connects to the "
            "postgres database too)"
        )
    elif "Connection refused" in text or "could not connect" in text:
        hint = "cannot reach the server (check host and port, and that it is running)"
    elif "timeout expired" in text:
        hint = "the server did not answer within connect_timeout"
    else:
        hint = tool_said(exc)
    return TaskError(f"{what}: {hint}")


T = TypeVar("T")


def _home_database(task: Task) -> str | None:
    """The first database the task names (None with ``all: true``)."""
    if task.config["all"]:
        return None
    value = task.config["database"]
    return value if isinstance(value, str) else next(iter(value), None)


def _in_postgres_or_home(task: Task, attempt: Callable[[str], T]) -> T:
    """``attempt(database)`` in the ``postgres`` database, and again in the task's own
    (:func:`_home_database`) when no password matched the first: a ``~/.pgpass`` line
    that names only the task's database (as backup-suite's README wrote them,
    ``localhost:5432:webapp_db:webapp_user:pw``) made check and the globals dump fail
    with "fe_sendauth: no password supplied", and the whole service with them. Raises
    CommandError (the first attempt's when the second is not tried)."""
    try:
        return attempt("postgres")
    except CommandError as exc:
        home = _home_database(task)
        if home in (None, "postgres") or "no password supplied" not in " ".join(exc.tail):
            raise
        return attempt(home)


def _psql(task: Task, env: dict[str, str], sql: str, database: str | None = None) -> list[str]:
    """Run one statement in ``database`` (by default ``postgres``, or the task's own
    database when only it has a password: :func:`_in_postgres_or_home`); return its rows
    (``|``-separated fields). Raises CommandError."""
    out = task.staging / ".psql-out"
    out.parent.mkdir(parents=True, exist_ok=True)

    def attempt(where: str) -> list[str]:
        argv = ["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", dbname(where), "-c", sql]
        try:
            task.run(argv, env=env, stdout=out, timeout=300, level=10)
            return [line for line in out.read_text().splitlines() if line]
        finally:
            out.unlink(missing_ok=True)

    return attempt(database) if database else _in_postgres_or_home(task, attempt)


def _names(task: Task, env: dict[str, str], sql: str) -> list[str]:
    """The names ``sql`` (a ``SELECT json_agg(...)``: :data:`LIST_SQL`, :data:`ALL_SQL`)
    returns, whatever they hold. Raises CommandError."""
    rows = _psql(task, env, sql)
    return list(json.loads(rows[0]) or []) if rows else []


def databases(task: Task, env: dict[str, str]) -> list[str]:
    """The databases the task dumps: those it names, or with ``all: true`` every one
    that accepts connections. Raises TaskError when they cannot be listed."""
    config = task.config
    if config["all"]:
        try:
            return _names(task, env, LIST_SQL)
        except CommandError as exc:
            raise _explain(exc, "cannot list the databases") from None
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
    who = f" as {task.config['run_as']}" if task.config.get("run_as") else ""
    lines = [f"pg_dump -Fc {names} on {where} port {task.config['port']}{who}"]
    if task.config["globals"]:
        lines.append("pg_dumpall --globals-only (roles, tablespaces)")
    return lines


@hookimpl
def pullback_probe(task: Task):
    """Log in as a dump would; list what a restore would lack."""
    with probing(task, _explain) as result:
        env = _env(task)
        names = databases(task, env)
        missing = absent(names, _names(task, env, LIST_SQL))
        result.problems += missing
        unreadable = [] if missing else [p for n in names for p in _unreadable(task, env, n)]
        if extra_options(task):  # (its --exclude-table may leave them out: not sure)
            result.warnings += [f"{p} (unless dump_options leaves it out)" for p in unreadable]
        else:
            result.problems += unreadable
        _, createdb, _ = (_psql(task, env, ROLE_SQL) or ["f|f|f"])[0].split("|")
        if createdb != "t":
            result.warnings.append(
                "the role cannot create databases (CREATEDB): a restore could not bring a "
                "database back; grant it, or restore with --username of a role that can"
            )
    return result


def lock_wait(task: Task) -> str:
    """pg_dump's ``--lock-wait-timeout`` option from the section's ``lock_wait_timeout``,
    in milliseconds."""
    return f"--lock-wait-timeout={int(parse_duration(task.config['lock_wait_timeout']) * 1000)}"


def dump_argv(extra: list[str], name: str) -> list[str]:
    """The pg_dump command line of the database ``name``: ``-Fc`` keeps the database's
    own entries (owner, comment, settings, grants, encoding: pg_restore --create reads
    them; pg_dump ignores --create for its archive formats), the task's ``extra``
    options, then ``--`` and the name as a connection string (:func:`dbname`), so that
    a name is neither an option nor a connection string."""
    return ["pg_dump", "-Fc", *extra, "--", dbname(name)]


UNREADABLE_SQL = (
    "SELECT json_agg(what) FROM (SELECT format('%s %I.%I', CASE c.relkind WHEN 'S' THEN "
    "'sequence' ELSE 'table' END, n.nspname, c.relname) AS what FROM pg_class c JOIN "
    "pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'S') "
    "AND c.relpersistence <> 't' AND n.nspname "
    "NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' AND "
    "NOT (has_schema_privilege(n.oid, 'USAGE') AND CASE c.relkind WHEN 'S' THEN "
    "has_sequence_privilege(c.oid, 'SELECT') ELSE has_table_privilege(c.oid, 'SELECT') END) "
    "ORDER BY 1 LIMIT 4) s"
)
"""The first tables and sequences of a database that the role may not read (nor reach
through their schema): pg_dump fails on each. Another session's temporary tables are
not among them (pg_dump leaves them out; helper-138 saw check fail on an
application's CREATE TEMP TABLE)."""


def _unreadable(task: Task, env: dict[str, str], name: str) -> list[str]:
    """Why pg_dump of the database ``name`` would fail, found by connecting to it as the
    dump does: a connection refused (``REVOKE CONNECT``), a table or sequence the role
    may not read (an outside walk saw check say ok for the docs' least-privilege
    owner, whose next dump failed on a table a migration had created as postgres)."""
    try:
        rows = _psql(task, env, UNREADABLE_SQL, database=name)
    except CommandError as exc:
        return [str(_explain(exc, f"cannot connect to {printable(name, 64)}"))]
    found = [printable(what, 130) for what in (json.loads(rows[0]) or [])] if rows else []
    if not found:
        return []
    shown = ", ".join(found[:3]) + (" ..." if len(found) > 3 else "")
    return [
        f"the role may not read {shown} in the database {printable(name, 64)}, so pg_dump "
        "of it would fail; grant it SELECT (and USAGE on the schema), or dump as the "
        "owner, a member of pg_read_all_data or a superuser"
    ]


@hookimpl
def pullback_dump(task: Task):
    env = _env(task)
    try:
        names = databases(task, env)
        if task.config["globals"]:
            _dump_globals(task, env)
        each_database(task, names, lambda name: _dump_one(task, env, name))
    finally:
        forget_private(task)


def _dump_one(task: Task, env: dict[str, str], name: str) -> None:
    """pg_dump of the database ``name`` into the staging directory. Raises TaskError."""
    target = task.staging / file_name(name, ".dump")
    try:
        task.run(
            dump_argv([lock_wait(task), *extra_options(task)], name),
            env=env,
            stdout=target,
            timeout=timeout(task),
        )
    except CommandError as exc:
        target.unlink(missing_ok=True)
        raise _explain(exc, f"pg_dump of {name} failed") from None
    task.log.info("dumped database %s (%d bytes)", name, target.stat().st_size)


def _dump_globals(task: Task, env: dict[str, str]) -> None:
    target = task.staging / GLOBALS

    def dumpall(database: str, *options: str) -> None:
        chosen = [] if database == "postgres" else [f"--database={dbname(database)}"]
        command = ["pg_dumpall", "--globals-only", *chosen, *options]
        task.run(command, env=env, stdout=target, timeout=timeout(task))

    try:
        _in_postgres_or_home(task, dumpall)
    except CommandError as exc:
        if "permission denied" not in " ".join(exc.tail):
            raise _explain(exc, "pg_dumpall --globals-only failed") from None
        task.log.warning("not a superuser: roles are dumped without their passwords")
        try:
            _in_postgres_or_home(task, lambda database: dumpall(database, "--no-role-passwords"))
        except CommandError as again:
            raise _explain(again, "pg_dumpall --globals-only failed") from None


# -- restore ----------------------------------------------------------------------------


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    """``text`` as an escape string literal, ``E'...'`` (backslashes doubled, quotes
    doubled): read the same whatever the server's ``standard_conforming_strings``. A
    plain ``'...'`` of a name holding ``\\'`` ended early on a server set off, and
    the rest of the database's name ran as the restoring superuser (an outside attack,
    in a ``--replace --dry-run``)."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _described(session: list) -> str:
    """``psql as shop_owner from 10.0.0.5 (client backend)``: one session, each of its
    words (which its client chose) escaped and cut short."""
    kind, application, user, address = (printable(word or "", 40) for word in session)
    who = f"{application or 'no application_name'} as {user or '?'}"
    if not kind:  # another role's session: PostgreSQL hides where it comes from too
        return f"{who} (this role may not see more of it)"
    return f"{who} {f'from {address}' if address else 'over the local socket'} ({kind})"


def _listed(sessions: list[str]) -> str:
    """The first few sessions, then how many more there are."""
    more = len(sessions) - SESSIONS_SHOWN
    return "; ".join(sessions[:SESSIONS_SHOWN]) + (f"; and {more} more" if more > 0 else "")


class _Restore(DatabaseRestore):
    """One task's restore: the preflight, then each database beside or over the live one."""

    suffix = ".dump"

    def __init__(self, task: Task, source: Path, plan: RestorePlan):
        super().__init__(task, source, plan)
        self.env = _env(task)
        self.globals = source / GLOBALS
        self.superuser = self.createdb = self.createrole = False
        self.owners: set[str] = set()
        """The roles the dumps give their objects to."""
        self.missing_roles: set[str] = set()
        self.roles: set[str] = set()
        """The roles the server has: globals.sql never changes them."""
        self.tablespaces: set[str] = set()
        """The tablespaces the server has: globals.sql never changes them either."""

    # -- the preflight ------------------------------------------------------------------

    def preflight(self) -> list[str]:
        """What would stop the restore, found before anything is changed."""
        problems = self._unreadable()
        try:
            role = (_psql(self.task, self.env, ROLE_SQL) or ["f|f|f"])[0].split("|")
            self.superuser, self.createdb, self.createrole = (v == "t" for v in role)
            live = set(_names(self.task, self.env, ALL_SQL["databases"]))
            self.roles = set(_names(self.task, self.env, ALL_SQL["roles"]))
            self.tablespaces = set(_names(self.task, self.env, ALL_SQL["tablespaces"]))
        except CommandError as exc:
            return [*problems, str(_explain(exc, "cannot log in"))]
        if not (self.globals.exists() and self.createrole):  # else they come with the roles
            self.missing_roles = self.owners - self.roles
        if not self.createdb:
            problems.append(
                "the role cannot create databases (CREATEDB), and a restore creates one; "
                "grant it (ALTER ROLE ... CREATEDB) or restore with --username of a role "
                "that can (e.g. postgres)"
            )
        for name in (database_of(d, ".dump") for d in self.dumps):
            words = ("restored", "before_restore") if self.plan.replace else ("restored",)
            problems += [
                f"a database {taken} exists already (a restore in the same second?); try again"
                for taken in (renamed(name, word, self.plan.stamp) for word in words)
                if taken in live
            ]
            if self.plan.replace and name in live:
                problems += self._replace_problems(name)
        return problems

    def _unreadable(self) -> list[str]:
        """The dumps that cannot be read to their end: their table of contents (which also
        names the roles owning their objects), then every byte."""
        problems = []
        for dump in self.dumps:
            try:
                self.owners |= self._owners(dump)
                everything = ["pg_restore", "--file=/dev/null"]
                self.task.run(everything, stdin=dump, timeout=timeout(self.task), level=10)
            except CommandError as exc:
                problems.append(f"{dump.name} cannot be read to its end ({tool_said(exc)})")
        return problems

    def _owners(self, dump: Path) -> set[str]:
        """The roles owning a dump's objects: the last word of each entry of its table of
        contents. Raises CommandError for a dump that cannot be read to its end."""
        listing = self.task.staging / ".toc"
        try:
            self.task.run(["pg_restore", "--list"], stdin=dump, stdout=listing, level=10)
            entries = listing.read_text(errors="replace").splitlines()
        finally:
            listing.unlink(missing_ok=True)
        return {line.split()[-1] for line in entries if line and not line.startswith(";")}

    def _replace_problems(self, name: str) -> list[str]:
        owns = _psql(
            self.task,
            self.env,
            "SELECT pg_has_role(current_user, datdba, 'MEMBER') "  # noqa: S608 - _literal
            f"FROM pg_database WHERE datname = {_literal(name)}",
        )
        sessions = self._sessions(name)
        problems = []
        if owns != ["t"] and not self.superuser:
            problems.append(f"the role does not own {name}, so it cannot rename it aside")
        if sessions:
            problems += self.plan.sessions_problem(
                self.task.log,
                f"{len(sessions)} session(s) are connected to {name} ({_listed(sessions)}): "
                "stop the application (a docker or systemd task of the service does) and "
                "try again",
            )
        return problems

    def _sessions(self, *names: str) -> list[str]:
        """The sessions that keep the databases ``names`` from being renamed, one short
        line each: all but our own and autovacuum workers (a rename ends those itself).
        Raises CommandError."""
        quoted = ", ".join(_literal(name) for name in names)
        rows = _psql(self.task, self.env, SESSIONS_SQL.format(names=quoted))
        return [_described(json.loads(row)) for row in rows]

    # -- the steps ----------------------------------------------------------------------

    def before_databases(self) -> None:
        """The roles of globals.sql that the server lacks."""
        if not self.globals.exists():
            return
        if not self.createrole:
            self.plan.note(
                self.task.log,
                "roles (globals.sql) are not restored: the role may not create roles",
            )
            return
        dumped = self.globals.read_text(errors="replace")
        sql, left_alone = only_new(dumped, self.roles, self.tablespaces)
        what = f"create the roles of {GLOBALS} that this server lacks"
        if left_alone:
            shown = ", ".join(left_alone[:10]) + (" ..." if len(left_alone) > 10 else "")
            what += f"; the existing roles stay as they are ({shown})"
        if self.plan.step(self.task.log, what):
            new_roles = self.task.staging / ".new-roles.sql"
            new_roles.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(new_roles, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:  # it holds password hashes
                handle.write(sql)
            try:
                self.task.run(["psql", "-X", "-q", "-d", "postgres"], env=self.env, stdin=new_roles)
            except CommandError as exc:
                self.task.log.warning("some roles were not created: %s", tool_said(exc))
            finally:
                new_roles.unlink(missing_ok=True)

    def restore_database(self, dump: Path) -> None:
        name = database_of(dump, ".dump")
        fresh = renamed(name, "restored", self.plan.stamp)
        log = self.task.log
        own = self._database_sql(dump, name)  # (read in a dry run too: it changes nothing)
        options = pg_database.create_options(own or "", name)
        if self.plan.step(log, f"create the database {fresh}{' with' if options else ''}{options}"):
            self._create(fresh, options, dump)
        owners = self._owner_options()
        if self.plan.step(log, f"pg_restore {dump.name} into {fresh}"):
            try:
                self.task.run(
                    ["pg_restore", "--exit-on-error", *owners, "-d", dbname(fresh)],
                    env=self.env,
                    stdin=dump,
                    timeout=timeout(self.task),
                )
            except CommandError as exc:
                self._sql(f"DROP DATABASE IF EXISTS {_quote(fresh)}", f"removing {fresh}")
                raise TaskError(
                    f"pg_restore of {dump.name} failed, nothing live was touched: {tool_said(exc)}"
                ) from None
        if (
            self.plan.step(log, f"give {fresh} the owner, settings and grants {dump.name} holds")
            and own is not None
        ):
            self._properties(own, dump, name, fresh)
        if self.plan.replace:
            self._swap(name, fresh)
        else:
            before = renamed(name, "before_restore", self.plan.stamp)
            self.plan.note(
                log,
                f"{name} is restored as {fresh}; the live {name} is untouched. To swap it in: "
                f"ALTER DATABASE {_quote(name)} RENAME TO {_quote(before)}; "
                f"ALTER DATABASE {_quote(fresh)} RENAME TO {_quote(name)}; "
                "(or restore again with --replace)",
            )

    def _create(self, fresh: str, options: str, dump: Path) -> None:
        """Create the database ``fresh`` with the encoding and locales of the dump's
        (``options``: :func:`.pg_database.create_options`); where this server cannot
        (a locale it lacks, an older server), with its defaults, and a note says so.
        Raises TaskError."""
        base = f"CREATE DATABASE {_quote(fresh)} WITH TEMPLATE = template0"
        if not options:
            self._sql(base, f"creating {fresh}")
            return
        encoding = re.search(r" ENCODING = ('[^']*')", options)
        tries = [options]
        if encoding:  # the C locale takes every encoding, for every role
            tries += [
                f" ENCODING = {encoding[1]}{provider} LOCALE = 'C'"
                for provider in (" LOCALE_PROVIDER = libc", "")
            ]
        refused = None
        for option in tries:
            try:
                self._sql(base + option, f"creating {fresh}")
            except TaskError as exc:
                refused = refused or exc
                continue
            if option != options:
                self._made_otherwise(fresh, dump, options, option, refused)
            return
        if encoding and encoding[1] == "'SQL_ASCII'":
            raise TaskError(  # (its bytes, unchecked, would load into UTF8 unreadable)
                f"creating {fresh} as {dump.name} says ({options.strip()}) failed, and a "
                "SQL_ASCII database cannot be loaded into another encoding: "
                f"{printable(str(refused), 300)}"
            )
        self._sql(base, f"creating {fresh}")  # (its own failure is the error)
        self._made_otherwise(fresh, dump, options, "", refused)

    def _made_otherwise(
        self, fresh: str, dump: Path, options: str, made: str, refused: Exception | None
    ) -> None:
        """Note that ``fresh`` was made with ``made`` (the server's defaults when "")
        instead of the dump's ``options``, which the server ``refused``."""
        how = f"with{made}" if made else "with this server's default encoding and locale"
        self.plan.note(
            self.task.log,
            f"{fresh} is made {how}, not with those of {dump.name} ({options.strip()}), "
            f"which it refused: {printable(str(refused), 300)}; its text may sort and "
            "compare otherwise",
        )

    def _database_sql(self, dump: Path, name: str) -> str | None:
        """What the dump holds of the database ``name`` itself (``pg_restore --create``
        of its database entries: :func:`.pg_database.wanted_entries`), "" for a dump
        without them (not one of pg_dump's archives of a whole database); None, said
        as a warning, when pg_restore cannot read it."""
        try:
            return self._read_database_entries(dump)
        except CommandError as exc:
            self.task.log.warning(
                "the owner, settings and grants of %s could not be read from %s (%s): the "
                "restored copy is made with this server's defaults and belongs to the "
                "restoring role",
                name,
                dump.name,
                tool_said(exc),
            )
            return None

    def _properties(self, sql: str, dump: Path, name: str, fresh: str) -> None:
        """Give ``fresh`` the owner, comment, settings and grants ``sql`` (the dump's
        entries of the database ``name``) holds (:mod:`.pg_database`). What cannot be set
        (a missing role, a role that may not give the database away) is a warning: the
        data is restored."""
        log = self.task.log
        found, odd = pg_database.renamed_properties(sql, name, fresh)
        if not found:
            self.plan.note(
                log,
                f"{dump.name} holds no owner, settings or grants of the database (no "
                f"DATABASE entry in pg_restore --create --list): {fresh} belongs to the "
                f"restoring role and every role may connect; give it those of {name} "
                "(ALTER DATABASE ... OWNER TO ..., GRANT/REVOKE ... ON DATABASE ...)",
            )
            return
        if odd:
            log.warning(
                "%d of the database entries of %s have a shape pullback does not carry "
                "and were not run on %s (pg_restore --create --list shows them)",
                odd,
                dump.name,
                fresh,
            )
        failed = [said for said in map(self._run_sql, found) if said]
        if failed:
            log.warning(
                "%d of %d owner, settings and grants of %s were not set on %s: %s",
                len(failed),
                len(found),
                name,
                fresh,
                printable(failed[0], 300),
            )

    def _run_sql(self, statement: str) -> str | None:
        """Run one statement through psql's standard input (a setting's value may be a
        secret: never on a command line); returns what psql said when it failed."""
        script = self.task.staging / ".statement.sql"
        fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            # the dump's words are quoted as pg_dump wrote them, for this setting: psql
            # lexes by the server's, and a server set off read a backslash in them as an
            # escape (an outside attack: the database owner's comment made the restoring
            # superuser run its ALTER ROLE). Not PGOPTIONS: PgBouncer refuses it.
            handle.write(f"SET standard_conforming_strings = on;\n{statement}\n")
        try:
            argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres"]
            self.task.run(argv, env=self.env, stdin=script, timeout=600, level=10)
        except CommandError as exc:
            return tool_said(exc)
        finally:
            script.unlink(missing_ok=True)
        return None

    def _read_database_entries(self, dump: Path) -> str:
        """``pg_restore --create`` of the dump's entries of the database itself, "" when
        it has none. Raises CommandError."""
        listing = self.task.staging / ".toc-create"
        try:
            self.task.run(["pg_restore", "--create", "--list"], stdin=dump, stdout=listing)
            wanted = pg_database.wanted_entries(listing.read_text(errors="replace"))
            if not wanted:
                return ""
            # read by pg_restore itself, perhaps as run_as; the database's own names, for
            # no other user (it was a 0644 file in /tmp, left there by a killed restore)
            run_as = self.task.config.get("run_as")
            reader = _uid(run_as) if run_as else None
            chosen = private_file(self.task, "toc.list", wanted, reader=reader)
            try:
                argv = ["pg_restore", "--create", f"--use-list={chosen}", "--file=-"]
                self.task.run(argv, stdin=dump, stdout=listing)
            finally:
                os.unlink(chosen)
            # as bytes, then decoded: read_text's universal newlines turned a comment's CR
            # into LF (an outside attack)
            return listing.read_bytes().decode(errors="replace")
        finally:
            listing.unlink(missing_ok=True)

    def _owner_options(self) -> list[str]:
        """Keep the objects' owners and grants when the restoring role can give them, and
        the roles exist; else the restoring role owns everything (and says so)."""
        if not self.superuser:
            return ["--no-owner"]  # a role other than a superuser can only give to itself
        if self.missing_roles:
            self.plan.note(
                self.task.log,
                f"the roles {', '.join(sorted(self.missing_roles))} do not exist on this "
                "server: the restored objects belong to the restoring role, without their "
                "grants; create the roles and restore again to keep them",
            )
            return ["--no-owner", "--no-privileges"]
        return []

    def _swap(self, name: str, fresh: str) -> None:
        before = renamed(name, "before_restore", self.plan.stamp)
        live = name in set(_names(self.task, self.env, LIST_SQL))
        renames = (
            [f"ALTER DATABASE {_quote(name)} RENAME TO {_quote(before)}"] if live else []
        ) + [f"ALTER DATABASE {_quote(fresh)} RENAME TO {_quote(name)}"]
        what = f"swap: {name} -> {before}, {fresh} -> {name}" if live else f"{fresh} -> {name}"
        if self.plan.step(self.task.log, what, destructive=live):
            self._rename(name, fresh, renames)
            if live:
                self.plan.note(
                    self.task.log,
                    f"{name} is restored; the database it replaced is kept as {before} "
                    f"(drop it when you are sure: DROP DATABASE {_quote(before)})",
                )

    def _rename(self, name: str, fresh: str, renames: list[str]) -> None:
        """The renames in one transaction: all happen, or none. A rename ends the
        autovacuum workers on its database itself (waiting up to 5 seconds); when one is
        refused and no other session is there (a worker came back), it is tried again."""
        argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c"]
        sql = "BEGIN; " + "; ".join(renames) + "; COMMIT;"
        for attempt in range(RENAME_ATTEMPTS):
            try:
                self.task.run([*argv, sql], env=self.env, timeout=600)
                return
            except CommandError as exc:
                said = tool_said(exc)
            sessions = self._sessions_now(name, fresh)
            if sessions or "accessed by other users" not in said:
                break
            self.task.log.info("the rename was refused (%s); trying again", said)
            time.sleep(1 + attempt)
        raise TaskError(self._left_behind(name, fresh, renames, said, sessions))

    def _sessions_now(self, *names: str) -> list[str]:
        """:meth:`_sessions`, or none when they cannot be listed (after a failure)."""
        try:
            return self._sessions(*names)
        except CommandError:
            return []

    def _left_behind(self, name: str, fresh: str, renames: list[str], said: str, sessions):
        """What a failed swap leaves, and how to finish it or undo it."""
        failed = f"swapping {fresh} in failed: {said}"
        try:
            present = set(_names(self.task, self.env, ALL_SQL["databases"]))
        except CommandError as exc:
            return f"{failed}; the databases cannot be listed now ({tool_said(exc)}): see " + (
                f"which of {name} and {fresh} exist, then run: {'; '.join(renames)};"
            )
        if fresh not in present:  # cannot be after a failed transaction, but say so
            return f"{failed}; {fresh} is gone: see whether {name} is the restored database"
        connected = f" (connected now: {_listed(sessions)})" if sessions else ""
        return (
            f"{failed}. The live {name} is untouched; the restored copy is kept as {fresh}. "
            f"To finish, stop the application{connected} and run: {'; '.join(renames)}; "
            f"or drop the copy (DROP DATABASE {_quote(fresh)}) and restore again"
        )

    def _sql(self, sql: str, what: str) -> None:
        try:
            self.task.run(
                ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c", sql],
                env=self.env,
                timeout=600,
            )
        except CommandError as exc:
            raise TaskError(f"{what} failed: {tool_said(exc)}") from None


@hookimpl
def pullback_restore(task: Task, source: Path, target: Path | None, dry_run: bool, plan):
    """Each database comes back beside the live one, or, with ``--replace`` and after a
    preflight, in its place (the replaced one is kept, renamed)."""
    if target is not None:
        task.log.warning(
            "--target does not apply to databases: restoring into the server "
            "named in the service file (or by --hostname)"
        )
    try:
        _Restore(task, source, plan).run()
    finally:
        forget_private(task)
