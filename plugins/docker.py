"""The ``docker`` task: stop a compose application for the backup, start it again after."""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from pathlib import Path

import yaml

from ..common.errors import CommandError
from ..common.fsutil import make_dirs_at, read_regular_stat, untrusted_link, write_all
from ..common.text import printable
from ..common.trees import remove_tree
from . import hookimpl, load_plugin_schema
from ._common import first, timeout
from .before_restore import check_hand_over, hand_over
from .files import restore_copies
from .task import Requirement, Task, TaskError, TaskType


@hookimpl
def pullback_task_types():
    return [
        TaskType(
            "docker",
            load_plugin_schema("docker"),
            description="docker compose applications (stop, archive config, start)",
            requires=(Requirement(("docker",), "install Docker with compose"),),
            stops_service=lambda config: bool(config.get("stop_services", True)),
            holds_data=_archives_something,
            restores_below_target=True,
        )
    ]


def _archives_something(config: dict) -> bool:
    """Whether the dump puts anything in the archive: the compose file, or the pinned
    images (an outside walk saw every restore of a service with ``backup_config: false``
    warn "docker: nothing to restore")."""
    return bool(config.get("backup_config", True)) or _pinning(config)


def _pinning(config: dict) -> bool:
    """pin_images, or backup-suite's pin_images_to_digest."""
    pinned = first(config, "pin_images_to_digest", default=False)
    return bool(pinned or config.get("pin_images", False))


def compose_file(task: Task) -> Path:
    return Path(first(task.config, "docker_compose_path", "compose_file"))


def _compose(task: Task, *args: str) -> list[str]:
    """``docker compose`` of the task's file with every profile enabled (``--profile
    '*'``, Compose v2): a running service that has ``profiles:`` is one the
    administrator started; without it ``config --services`` does not list it and
    ``start`` and ``stop`` of it fail or do nothing (Compose before 2.20), and an
    outside attack saw every run stop such a service and never start it again."""
    project = task.config.get("project_directory") or str(compose_file(task).parent)
    return [
        "docker",
        "compose",
        "-f",
        str(compose_file(task)),
        "--project-directory",
        project,
        "--profile",
        "*",
        *args,
    ]


def _lines(task: Task, argv: list[str], name: str) -> list[str]:
    out = Path(task.state.setdefault("_tmp", str(task.staging.parent / f".{task.type}-tmp")))
    out.mkdir(parents=True, exist_ok=True)
    target = out / name
    task.run(argv, stdout=target, timeout=timeout(task), level=10)
    lines = [line.strip() for line in target.read_text().splitlines() if line.strip()]
    target.unlink()
    return lines


@hookimpl
def pullback_validate(task: Task):
    config = task.config
    if ("docker_compose_path" in config) == ("compose_file" in config):
        return ["name the compose file: docker_compose_path (or compose_file), once"]
    if not compose_file(task).is_file():
        return [f"compose file {compose_file(task)} does not exist"]
    return []


@hookimpl
def pullback_plan(task: Task):
    lines = []
    if task.config["stop_services"]:
        lines.append(f"stop the running services of {compose_file(task)}, start them after")
    if task.config["backup_config"]:
        lines.append("archive the compose file and .env")
    if _pinning(task.config):
        lines.append("record the image digests")
    return lines


@hookimpl
def pullback_prepare(task: Task):
    if not task.config["stop_services"]:
        return
    if not compose_file(task).is_file():  # (a restore of an application lost with it)
        task.log.info("no compose file at %s: nothing to stop", compose_file(task))
        return
    try:
        running = _lines(task, _compose(task, "ps", "--services", "--status", "running"), "ps")
    except CommandError as exc:  # (a compose file an edit broke: its restore is the way out)
        raise TaskError(
            f"{exc}; nothing was stopped. If {printable(compose_file(task), 200)} is broken, "
            "fix it, or restore it below --target DIR (the application keeps running) and "
            "copy it into place"
        ) from None
    task.state["running"] = running
    if not running:
        task.log.info("no service of %s is running; nothing to stop", compose_file(task))
        return
    wait = task.config.get("stop_wait_seconds")
    extra = ["--timeout", str(wait)] if wait is not None else []
    task.log.info("stopping %s", ", ".join(running))
    # recorded first: a stop that fails halfway may still have stopped some of them
    task.stopping(*running)
    task.run(_compose(task, "stop", *extra, *running), timeout=timeout(task))


@hookimpl
def pullback_dump(task: Task):
    if task.config["backup_config"]:
        source = compose_file(task)
        _stage_copy(source, task.staging / source.name)
        env = Path(task.config.get("project_directory") or source.parent) / ".env"
        if env.is_file():
            _stage_copy(env, task.staging / ".env")
    if _pinning(task.config):
        _pin_images(task)


MAX_STAGED = 16 << 20
"""Bytes a compose file or ``.env`` may have: either is a few kilobytes; a file its
directory's owner made sparse and huge would otherwise be written out in full in the
work directory."""


def _stage_copy(source: Path, staged: Path) -> None:
    """``source`` copied with its mode, times and owner (a restore gives the file back
    the snapshot's owner: an outside attack saw an application user's .env come back
    root's). It is reached by descriptors from ``/`` (a symlink the application
    directory's owner planted is not followed: an outside attack read a file of root's
    into the archive through ``.env``), must be a regular file of at most 16 MiB.
    Raises TaskError."""
    try:
        data, found = read_regular_stat(source, MAX_STAGED, trusted=True)
    except (OSError, ValueError) as exc:
        if _is_loop(exc):
            link = untrusted_link(source) or source
            why = (
                f"{printable(link, 200)} is a symlink another user could have made or "
                "swapped (root does not follow it: make it root's, or name the real path)"
            )
        else:
            why = _why(exc)
        raise TaskError(f"{printable(source, 200)}: not archived: {why}") from None
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        write_all(fd, data)
        os.fchmod(fd, stat.S_IMODE(found.st_mode))
        if os.geteuid() == 0:
            os.fchown(fd, found.st_uid, found.st_gid)
    finally:
        os.close(fd)
    os.utime(staged, ns=(found.st_atime_ns, found.st_mtime_ns), follow_symlinks=False)


def _is_loop(exc: Exception) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.ELOOP


def _why(exc: Exception) -> str:
    return exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)


def _pin_images(task: Task) -> None:
    config_json = _lines(task, _compose(task, "config", "--format", "json"), "config")
    try:
        config = json.loads("\n".join(config_json))
    except ValueError:
        raise TaskError("docker compose config did not print JSON") from None
    digests = {}
    for name, service in (config.get("services") or {}).items():
        image = service.get("image")
        if not image:
            continue
        try:
            found = _lines(
                task,
                ["docker", "image", "inspect", "--format", "{{json .RepoDigests}}", image],
                f"digest-{name}",
            )
            repo_digests = json.loads(found[0]) if found else []
        except (CommandError, ValueError):
            repo_digests = []
        if not repo_digests:
            task.log.warning("no digest for %s (%s): built locally or never pulled", name, image)
            continue
        digests[name] = {"image": image, "digest": repo_digests[0]}
        service["image"] = repo_digests[0]
    (task.staging / "images.json").write_text(json.dumps(digests, indent=2) + "\n")
    (task.staging / "docker-compose.pinned.yml").write_text(yaml.safe_dump(config, sort_keys=False))


@hookimpl
def pullback_finish(task: Task, failed: bool):
    stopped = task.state.pop("stopped", None)
    defined = _defined(task) if stopped else None
    tmp = task.state.pop("_tmp", None)
    if tmp:
        remove_tree(tmp, ignore_errors=True)
    if not stopped:
        return
    gone = [name for name in stopped if defined is not None and name not in defined]
    if gone:
        task.log.warning("%s: no longer in %s, not started", ", ".join(gone), compose_file(task))
    stopped = [name for name in stopped if name not in gone]
    if not stopped:
        return
    task.log.info("starting %s again", ", ".join(stopped))
    task.run(_compose(task, "start", *stopped), timeout=timeout(task))
    wait = task.config["wait_after_restart"]
    if wait:
        task.log.info("waiting %gs after the restart", wait)
        time.sleep(wait)


def _defined(task: Task) -> set[str] | None:
    """The services the compose file defines now (a restore may have put back one
    without a service that ran: ``compose start`` of it would fail and start none), or
    None when compose cannot say."""
    try:
        return set(_lines(task, _compose(task, "config", "--services"), "defined"))
    except (CommandError, TaskError):
        return None


_NOT_COMPOSE = {".env", "images.json", "docker-compose.pinned.yml"}
"""The files of a snapshot's docker directory that are not its compose file."""


def _snapshot_compose_name(source: Path, original: Path, below_target: bool) -> str:
    """The name of the snapshot's compose file: the one the service file names, or, when
    the snapshot holds one of another name (the application moved to ``compose.yaml``
    since), that one below ``--target`` (beside where the service file's would go).
    Raises TaskError, before anything is restored, for such a snapshot restored in place:
    restoring only its ``.env`` said "restored" (an outside attack)."""
    if (source / original.name).is_file() or not source.is_dir():
        return original.name
    others = sorted(p.name for p in source.iterdir() if p.name not in _NOT_COMPOSE)
    if not others or below_target:
        return others[0] if others else original.name
    raise TaskError(
        f"the snapshot's compose file is {printable(others[0], 100)}, the service file "
        f"names {printable(original, 200)}: nothing restored; point docker_compose_path "
        "at the file the snapshot holds, or restore below --target DIR and copy it"
    )


def _make_parent(path: Path) -> None:
    """The directory of ``path`` made when missing (:func:`.make_dirs_at`: by descriptor,
    never through a symlink its owner swapped in). Raises TaskError."""
    try:
        os.close(make_dirs_at(path.parent))
    except OSError as exc:
        raise TaskError(
            f"cannot make {printable(path.parent, 200)}: {exc.strerror or exc} (a symlink "
            "there another user could have made is refused); nothing was restored"
        ) from None


@hookimpl
def pullback_restore(task: Task, source: Path, target: Path | None, dry_run: bool, plan):
    """The compose file and .env go back to their place (or below ``target``) as the
    files task restores files (:func:`.files.restore_copies`): what they replace that
    differs is kept in the restore's safety directory first, a symlink in their place
    is refused (root would write through it: an outside attack had the directory's owner
    point ``.env`` into a directory of root's), owner, mode and times are the
    snapshot's. Images are not pulled: ``docker-compose.pinned.yml`` names the exact
    ones if needed (a note says where: :func:`.hand_over`)."""
    original = compose_file(task)
    snapshot_name = _snapshot_compose_name(source, original, below_target=target is not None)
    env_dir = Path(task.config.get("project_directory") or original.parent)
    files = ((snapshot_name, original.with_name(snapshot_name)), (".env", env_dir / ".env"))
    copies = [(str(live), source / name) for name, live in files if (source / name).is_file()]
    if (source / "docker-compose.pinned.yml").is_file():
        check_hand_over(plan)  # (before anything is restored)
    if not dry_run:  # a directory lost with the application: root's 0755, by descriptor
        for live, _ in copies:
            _make_parent(target / live.lstrip("/") if target else Path(live))
    restore_copies(task, copies, source, target, plan)
    if (source / "docker-compose.pinned.yml").is_file():
        pinned = hand_over(task.type, plan, source / "docker-compose.pinned.yml", source)
        plan.note(task.log, f"the images in use at backup time are in {pinned}")
