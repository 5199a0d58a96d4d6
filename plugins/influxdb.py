"""The ``influxdb`` task: ``influx backup`` (2.x) or ``influxd backup -portable`` (1.x)."""

from __future__ import annotations

from pathlib import Path

from ..common.errors import CommandError
from ..common.secrets import read_secret_file
from . import hookimpl, load_plugin_schema
from ._common import timeout
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
        )
    ]


def _v2_env(task: Task) -> dict[str, str]:
    env = {"INFLUX_HOST": task.config["host"]} if task.config.get("host") else {}
    if task.config.get("token_file"):
        env["INFLUX_TOKEN"] = read_secret_file(task.config["token_file"], "token file")
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


@hookimpl
def pullback_restore(task: Task, source: Path, target: Path | None, dry_run: bool):
    """``influxd restore -portable`` (1.x) or ``influx restore`` (2.x) from the backup."""
    backup = source / "backup"
    if not backup.is_dir():
        raise TaskError(f"{backup} is not in the restored snapshot")
    config = task.config
    if config["version"] == 1:
        argv = ["influxd", "restore", "-portable", *_v1_host(config)]
        if config.get("database"):
            argv += ["-db", config["database"]]
        env = None
    else:
        argv = ["influx", "restore"]
        if config.get("bucket"):
            argv += ["--bucket", config["bucket"]]
        env = _v2_env(task)
    if dry_run:
        task.log.info("would run %s %s", " ".join(argv), backup)
        return
    try:
        task.run([*argv, backup], env=env, timeout=timeout(task))
    except CommandError as exc:
        raise TaskError(
            f"influx restore failed: {exc.tail[-1] if exc.tail else exc.reason}"
        ) from None
