"""The ``mongodb`` task: ``mongodump --archive --gzip`` and ``mongorestore`` back."""

from __future__ import annotations

import json
from pathlib import Path

from ..common.errors import CommandError
from ..common.secrets import read_secret_file
from . import hookimpl, load_plugin_schema
from ._common import extra_options, forget_private, private_file, timeout
from .task import Requirement, Task, TaskError, TaskType

ARCHIVE = "mongodb.archive.gz"
TOOLS = "MongoDB Database Tools: https://www.mongodb.com/try/download/database-tools"


@hookimpl
def pullback_task_types():
    return [
        TaskType(
            "mongodb",
            load_plugin_schema("mongodb"),
            description="MongoDB (mongodump --archive --gzip)",
            requires=(Requirement(("mongodump",), TOOLS),),
            restores_below_target=True,
        )
    ]


def _arguments(task: Task) -> list[str]:
    """Connection arguments; secrets go into a private --config file (YAML)."""
    config = task.config
    secret: dict[str, str] = {}
    args: list[str] = []
    if config.get("uri"):
        secret["uri"] = config["uri"]
    else:
        if config.get("host"):
            args.append(f"--host={config['host']}")
        if config.get("port"):
            args.append(f"--port={config['port']}")
    if config.get("username"):
        args.append(f"--username={config['username']}")
    if config.get("password_file"):
        secret["password"] = read_secret_file(config["password_file"])
    if config.get("authentication_database"):
        args.append(f"--authenticationDatabase={config['authentication_database']}")
    if secret:
        # JSON is valid YAML, and quotes every odd character safely
        text = "".join(f"{k}: {json.dumps(v)}\n" for k, v in secret.items())
        args.insert(0, f"--config={private_file(task, 'mongo.yaml', text)}")
    return args


def _explain(exc: CommandError, what: str) -> TaskError:
    text = " ".join(exc.tail)
    if "Authentication failed" in text:
        return TaskError(f"{what}: the server refused the credentials")
    if "server selection error" in text or "connection refused" in text.lower():
        return TaskError(f"{what}: cannot reach the server (check uri or host and port)")
    return TaskError(f"{what}: {exc.tail[-1] if exc.tail else exc.reason}")


@hookimpl
def pullback_validate(task: Task):
    problems = []
    if task.config.get("uri") and (task.config.get("host") or task.config.get("port")):
        problems.append("give uri, or host and port, not both")
    if task.config["oplog"] and task.config.get("database"):
        problems.append(
            "oplog: true dumps every database (mongodump refuses --oplog with --db): "
            "leave out database, or set oplog: false"
        )
    return problems


@hookimpl
def pullback_plan(task: Task):
    what = task.config.get("database") or "every database"
    return [f"mongodump --archive --gzip of {what}"]


@hookimpl
def pullback_dump(task: Task):
    argv = ["mongodump", *_arguments(task), f"--archive={task.staging / ARCHIVE}", "--gzip"]
    if task.config.get("database"):
        argv.append(f"--db={task.config['database']}")
    if task.config["oplog"]:
        argv.append("--oplog")
    try:
        task.run([*argv, *extra_options(task)], timeout=timeout(task))
    except CommandError as exc:
        raise _explain(exc, "mongodump failed") from None
    finally:
        forget_private(task)


_NO_REPLAY = (
    "the dump's oplog is not replayed beside the live databases (mongorestore refuses "
    "--oplogReplay with a rename): each collection is as it was when it was dumped, not "
    "all as of the dump's end; --replace replays it"
)


@hookimpl
def pullback_restore(task: Task, source: Path, target: Path | None, dry_run: bool, plan):
    """From the archive, every database comes back beside the live one, as
    ``<database>_restored_<stamp>`` (mongorestore's namespace renaming); with ``--replace``
    the live databases are first copied aside (mongodump into the safety directory), then
    replaced (``mongorestore --drop``). ``mongorestore --dryRun`` runs first, in a dry run
    too: its verdict stops the restore before anything is changed."""
    archive = source / ARCHIVE
    if not archive.is_file():
        raise TaskError(f"{archive} is not in the restored snapshot")
    log = task.log
    base = ["mongorestore", *_arguments(task), f"--archive={archive}", "--gzip"]
    if task.config["oplog"] and plan.replace:  # (mongorestore refuses it with a rename)
        base.append("--oplogReplay")
    try:
        try:  # (changes nothing: run in a dry run too, whose verdict it is)
            task.run([*base, "--dryRun"], timeout=timeout(task))
        except CommandError as exc:
            what = "preflight failed (mongorestore --dryRun), nothing was changed"
            raise _explain(exc, what) from None
        plan.step(log, "preflight: ok (mongorestore --dryRun)")
        if not plan.replace:
            renamed_to = f"$db$_restored_{plan.stamp}.$coll$"
            argv = [*base, "--nsFrom=$db$.$coll$", f"--nsTo={renamed_to}"]
            if plan.step(log, f"mongorestore beside the live databases, as {renamed_to}"):
                task.run(argv, timeout=timeout(task))
                plan.note(log, f"restored as {renamed_to}; the live databases are untouched")
                if task.config["oplog"]:
                    plan.note(log, _NO_REPLAY)
            return
        kept = (plan.safety_dir or source) / f"mongodb-before-restore-{plan.stamp}.archive.gz"
        if kept.exists():
            raise TaskError(f"{kept} exists already (a restore in the same second?); try again")
        if plan.step(log, f"copy the live databases to {kept} (mongodump)"):
            kept.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            dump = ["mongodump", *_arguments(task), f"--archive={kept}", "--gzip"]
            if task.config.get("database"):
                dump.append(f"--db={task.config['database']}")
            task.run(dump, timeout=timeout(task))
        if plan.step(log, "mongorestore --drop (the live collections are replaced)", True):
            task.run([*base, "--drop"], timeout=timeout(task))
            plan.note(log, f"restored; what was replaced is kept in {kept}")
    except CommandError as exc:
        raise _explain(exc, "mongorestore failed") from None
    finally:
        forget_private(task)
