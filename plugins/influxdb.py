"""The ``influxdb`` task: ``influx backup`` (2.x) or ``influxd backup -portable`` (1.x)."""

from __future__ import annotations

from pathlib import Path

from ..common.errors import CommandError
from ..common.secrets import read_secret_file
from . import hookimpl, load_plugin_schema
from ._common import timeout, tool_said
from .task import Requirement, Task, TaskError, TaskType

V2_TOOL = "influx CLI of InfluxDB 2: https://docs.influxdata.com/influxdb/v2/tools/influx-cli/"


@hookimpl
def pullback_task_types():
    return [
        TaskType(
            "influxdb",
            load_plugin_schema("influxdb"),
            description="InfluxDB (influx backup / influxd backup -portable)",
            requires=(
                Requirement(("influx",), V2_TOOL, when=(("version", 2),)),
                Requirement(("influxd",), "apt install influxdb", when=(("version", 1),)),
            ),
            restores_below_target=True,
        )
    ]


def _v2_env(task: Task) -> dict[str, str]:
    env = {"INFLUX_HOST": task.config["host"]} if task.config.get("host") else {}
    if task.config.get("token_file"):
        env["INFLUX_TOKEN"] = read_secret_file(task.config["token_file"], "token file")
    elif task.config.get("token"):  # backup-suite's way: in the (owner-only) service file
        env["INFLUX_TOKEN"] = task.config["token"]
    if task.config.get("org"):
        env["INFLUX_ORG"] = task.config["org"]
    return env


def _v1_host(config: dict) -> list[str]:
    """``-host HOST:PORT`` when one is configured (influxd's default is 127.0.0.1:8088)."""
    return ["-host", config["host"]] if config.get("host") else []


@hookimpl
def pullback_validate(task: Task):
    config = task.config
    if config["version"] == 1 and (config.get("token_file") or config.get("bucket")):
        return ["token_file and bucket are for InfluxDB 2 (version: 2)"]
    if config.get("token_file") and config.get("token"):
        return ["give token_file or token, not both"]
    if config["version"] == 2 and config.get("database"):
        return ["database is for InfluxDB 1 (version: 1); InfluxDB 2 has bucket"]
    return []


@hookimpl
def pullback_plan(task: Task):
    if task.config["version"] == 1:
        return [f"influxd backup -portable of {task.config.get('database') or 'all databases'}"]
    return [f"influx backup of {task.config.get('bucket') or 'everything'}"]


@hookimpl
def pullback_dump(task: Task):
    config = task.config
    target = task.staging / "backup"
    try:
        if config["version"] == 1:
            argv = ["influxd", "backup", "-portable", *_v1_host(config)]
            if config.get("database"):
                argv += ["-database", config["database"]]
            task.run([*argv, target], timeout=timeout(task))
        else:
            argv = ["influx", "backup"]
            if config.get("bucket"):
                argv += ["--bucket", config["bucket"]]
            task.run([*argv, target], env=_v2_env(task), timeout=timeout(task))
    except CommandError as exc:
        raise TaskError(
            f"influx backup failed: {exc.tail[-1] if exc.tail else exc.reason}"
        ) from None


def _restore_argv(config: dict, stamp: str, replace: bool) -> tuple[list[str], str] | None:
    """The restore command and where it puts the data: beside the live bucket (2.x) or
    database (1.x) unless ``replace``; None when only a replacing restore can do it (a
    backup of everything)."""
    if config["version"] == 1:
        argv = ["influxd", "restore", "-portable", *_v1_host(config)]
        name = config.get("database")
        if name and not replace:
            return [*argv, "-db", name, "-newdb", f"{name}_restored_{stamp}"], (
                f"database {name}_restored_{stamp}"
            )
        if not replace:  # every database, over the live ones: 2.x's rule (an outside attack)
            return None
        return ([*argv, "-db", name] if name else argv), f"database {name or 'every one'}"
    bucket = config.get("bucket")
    if bucket and not replace:
        new = f"{bucket}_restored_{stamp}"
        return ["influx", "restore", "--bucket", bucket, "--new-bucket", new], f"bucket {new}"
    if not replace:
        return None
    if bucket:
        return ["influx", "restore", "--bucket", bucket], f"bucket {bucket}"
    return ["influx", "restore", "--full"], "every bucket and the server's metadata"


def _backup_argv(config: dict, kept: Path) -> list[str]:
    if config["version"] == 1:
        name = ["-database", config["database"]] if config.get("database") else []
        return ["influxd", "backup", "-portable", *_v1_host(config), *name, str(kept)]
    bucket = ["--bucket", config["bucket"]] if config.get("bucket") else []
    return ["influx", "backup", *bucket, str(kept)]


@hookimpl
def pullback_restore(task: Task, source: Path, target: Path | None, dry_run: bool, plan):
    """Beside the live data by default (a new bucket or database named
    ``<name>_restored_<stamp>``); with ``--replace``, after copying the live data aside
    (``influx backup`` into the safety directory)."""
    backup = source / "backup"
    if not backup.is_dir():
        raise TaskError(f"{backup} is not in the restored snapshot")
    config, log = task.config, task.log
    chosen = _restore_argv(config, plan.stamp, plan.replace)
    if chosen is None:
        what = "database" if config["version"] == 1 else "bucket"
        raise TaskError(
            f"the backup holds every {what}: restoring it replaces them; add --replace "
            "(the live data is copied aside first)"
        )
    argv, where = chosen
    env = _v2_env(task) if config["version"] == 2 else None
    try:
        if plan.replace:
            kept = (plan.safety_dir or source) / f"influxdb-before-restore-{plan.stamp}"
            if kept.exists():
                raise TaskError(f"{kept} exists already (a restore in the same second?)")
            if plan.step(log, f"copy the live data to {kept} ({argv[0]} backup)"):
                task.run(_backup_argv(config, kept), env=env, timeout=timeout(task))
        if plan.step(log, f"{' '.join(argv)}: restore into {where}", destructive=plan.replace):
            task.run([*argv, backup], env=env, timeout=timeout(task))
            plan.note(log, f"restored into {where}")
    except CommandError as exc:
        raise TaskError(f"influx restore failed: {tool_said(exc)}") from None
