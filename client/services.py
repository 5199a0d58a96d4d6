"""Finding service.yaml files and turning each into a validated :class:`Service`.

A broken service file never stops the others: it becomes a Service carrying its
problems, which the run reports as a failed service and ``check`` prints.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common import schema as schemas
from ..common import secrets
from ..common.config import world_readable_secret
from ..common.schema import load_schema
from ..common.text import printable
from ..common.yamlfile import Problem, YamlDocument, YamlFileError, load
from ..plugins.manager import PluginSet
from ..plugins.task import TaskType

SERVICE_FILE = "service.yaml"
SERVICE_FILES = (SERVICE_FILE, "service.yml")
"""The names a service file may have (backup-suite shipped both)."""

#: The built-in task keys (docs/architecture.md, *Service files*): a missing plugin for one
#: of these is "not installed", not a typo.
WELL_KNOWN_TASKS = (
    "files",
    "command",
    "postgresql",
    "mariadb",
    "mysql",
    "sqlite",
    "docker",
    "systemd",
    "mongodb",
    "influxdb",
    "univention",
)

BACKUP_SUITE_NOTE = "x-backup-suite"
"""Schema annotation of a key backup-suite's files may set that pullback accepts but does
not use as backup-suite's documentation said: its text says what pullback does instead."""


@dataclass
class TaskSpec:
    """One task section of a service file, validated."""

    key: str
    type: TaskType
    config: dict[str, Any]
    line: int | None
    warnings: list[str] = field(default_factory=list)
    """What the section sets that pullback does not use (``key: what it does instead``)."""
    lines: dict[tuple, int] = field(default_factory=dict)
    """The line of each key path below the section (``("shell",)``, ``("dump", 0)``)."""

    def line_of(self, key: tuple) -> int:
        """The line of ``key`` in the section, or of its nearest ancestor's."""
        while key and key not in self.lines:
            key = key[:-1]
        return self.lines.get(key) or self.line or 1


@dataclass
class Service:
    """A service file: its name, tasks and secrets, or the problems that broke it."""

    name: str
    file: Path
    enabled: bool = True
    description: str = ""
    tasks: list[TaskSpec] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    """Keys accepted but not used as backup-suite used them; shown, never fatal."""
    name_line: int = 1
    """The line of ``service.name`` in the file (1 when it gives none)."""

    @property
    def broken(self) -> bool:
        return bool(self.problems)


def find_service_files(service_dirs: list[Path] | tuple[Path, ...]) -> list[Path]:
    """``<dir>/<name>/service.yaml`` and ``<dir>/<type>/<name>/service.yaml`` (or
    ``service.yml``), sorted. A directory with both names gives both: the two services
    then share one name, which is reported."""
    found: list[Path] = []
    for directory in service_dirs:
        for name in SERVICE_FILES:
            for pattern in (f"*/{name}", f"*/*/{name}"):
                found.extend(
                    p
                    for p in directory.glob(pattern)
                    if not any(part.startswith(".") for part in p.relative_to(directory).parts)
                )
    return sorted(set(found))


def _unknown_task(doc: YamlDocument, key: str, plugins: PluginSet) -> Problem:
    refused = [e for e in plugins.errors if f"task '{key}'" in e]
    if refused:  # declared, but refused: say why, not "unknown"
        return doc.problem((key,), f"task '{key}' is not available: {refused[0]}")
    if key in WELL_KNOWN_TASKS:
        return doc.problem((key,), f"task '{key}' is not available: no installed plugin handles it")
    known = plugins.known_keys()
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f"; known tasks: {', '.join(known)}"
    return doc.problem((key,), f"unknown task {key!r}{hint}")


def _read(path: Path) -> YamlDocument | Service:
    """The service file's document, or a broken Service saying why it cannot be read."""
    fallback = path.parent.name
    try:
        doc = load(path, obeyed=True)
    except YamlFileError as exc:
        return Service(fallback, path, problems=exc.problems)
    if doc.data is None:
        empty = "the file is empty; expected a 'service:' section and tasks"
        return Service(fallback, path, problems=[Problem(str(path), 1, "", empty)])
    if not isinstance(doc.data, dict):
        return Service(fallback, path, problems=[doc.problem((), "expected a mapping of keys")])
    return doc


def backup_suite_notes(doc: YamlDocument, schema: dict, prefix: tuple = ()) -> list[Problem]:
    """One warning per key set at ``prefix`` whose schema carries ``x-backup-suite``: the
    key is accepted (a backup-suite file works unchanged) but not used as backup-suite's
    documentation said, and the warning says what pullback does instead. Values of secret
    keys are never quoted. Returns them as Problems (file, line, key, message)."""
    section: Any = doc.data
    for part in prefix:
        section = section.get(part) if isinstance(section, dict) else None
    if not isinstance(section, dict):
        return []
    notes = []
    for key, sub in schema.get("properties", {}).items():
        instead = sub.get(BACKUP_SUITE_NOTE) if isinstance(sub, dict) else None
        if not instead or key not in section:
            continue
        shown = "" if sub.get("x-secret") else f" ({printable(repr(section[key]), 120)})"
        message = f"accepted for backup-suite{shown}, not applied: {instead}"
        notes.append(doc.problem((*prefix, key), message))
    return notes


def _add_task(service: Service, doc: YamlDocument, key: str, task_type: TaskType) -> list[Problem]:
    """Validate the section ``key`` against its plugin's schema and add it as a task;
    return its problems."""
    section = doc.data[key]
    if section is None:  # "files:" with nothing below it: the defaults
        section = doc.data[key] = {}
    problems = schemas.validate(doc, task_type.schema, prefix=(key,))
    if problems:
        return problems
    config = schemas.apply_defaults(task_type.schema, section)
    notes = backup_suite_notes(doc, task_type.schema, (key,))
    spec = TaskSpec(key, task_type, config, doc.line_of((key,)))
    spec.lines = {path[1:]: line for path, line in doc.lines.items() if path[:1] == (key,)}
    spec.warnings = [f"{n.key}: {n.message}" for n in notes]
    service.tasks.append(spec)
    service.warnings += notes
    found = [v for _, v in schemas.find_secrets(task_type.schema, config)]
    service.secrets.extend(found)
    # masked everywhere from now on, not only in the task's commands: a plugin's own
    # log lines and exceptions carried them (an outside plugin author saw one in the
    # log and twice in the sidecar)
    secrets.register(*found)
    exposed = world_readable_secret(doc, task_type.schema, prefix=(key,))
    return [exposed] if exposed else []


def load_service(path: Path, plugins: PluginSet) -> Service:
    """Read and validate one service file. Never raises for bad content: see ``problems``."""
    doc = _read(path)
    if isinstance(doc, Service):
        return doc
    schema = load_schema("pullback.common", "service")
    problems = schemas.validate(doc, schema)
    notes = backup_suite_notes(doc, schema["properties"]["service"], ("service",))
    head = schemas.apply_defaults(schema, doc.data).get("service")
    head = head if isinstance(head, dict) else {}
    name = head.get("name")
    service = Service(name if isinstance(name, str) and name else path.parent.name, path)
    service.name_line = doc.line_of(("service", "name")) or 1
    service.enabled = head.get("enabled") is not False
    service.warnings = notes
    service.description = str(head.get("description", ""))

    seen_types: dict[str, str] = {}
    for key in [k for k in doc.data if k != "service"]:
        task_type = plugins.lookup(str(key))
        if task_type is None:
            problems.append(_unknown_task(doc, str(key), plugins))
        elif task_type.name in seen_types:
            same = f"'{key}' and '{seen_types[task_type.name]}' are the same task; keep one"
            problems.append(doc.problem((key,), same))
        else:
            seen_types[task_type.name] = key
            problems += _add_task(service, doc, key, task_type)
    if not seen_types and not problems:
        problems.append(doc.problem((), "no tasks: add at least one task section, e.g. 'files:'"))
    service.problems = sorted(problems, key=lambda p: (p.line or 0, p.key))
    return service


def discover(service_dirs, plugins: PluginSet) -> list[Service]:
    """Load every service file below ``service_dirs``; duplicate names are problems."""
    services: list[Service] = []
    by_name: dict[str, Service] = {}
    for path in find_service_files(list(service_dirs)):
        service = load_service(path, plugins)
        first = by_name.get(service.name)
        if first is not None:
            service.problems.append(
                Problem(
                    str(path),
                    service.name_line,
                    "service.name",
                    f"service name '{service.name}' is already used by {first.file}",
                )
            )
        else:
            by_name[service.name] = service
        services.append(service)
    return services
