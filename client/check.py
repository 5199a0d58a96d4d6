"""``pullback-client check``: validate everything a run needs, one line per problem."""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..common import scratch
from ..common.archive.compression import compress_command
from ..common.archive.filecache import CACHE_NAME
from ..common.cli import print_json
from ..common.config import load_validated, secret_file_problems
from ..common.errors import EXIT_CONFIG, EXIT_OK, describe
from ..common.fsutil import room, writable_or_creatable
from ..common.sandbox import SERVER_CONFIG, output_problem, shared_metrics_file, unit_writable_paths
from ..common.schema import load_schema
from ..common.text import printable
from ..common.units import human_size
from ..plugins.manager import PluginSet, as_lines, load_plugins
from ..plugins.task import ProbeResult
from .config import ClientConfig, IncrementalMode
from .incremental import WAITING_FOR_SERVER, makes_deltas
from .services import Service, discover, find_service_files
from .stages import make_tasks, validate_task


@dataclass
class CheckResult:
    problems: list[str] = field(default_factory=list)
    """What would make a run fail."""
    warnings: list[str] = field(default_factory=list)
    """What a restore would lack (reported, but the configuration is usable)."""
    notes: list[str] = field(default_factory=list)
    """What a run will do that an administrator may not expect (no problem)."""
    deltas: str = "off"
    """``off`` (full archives only: ``enabled: false``), ``waiting`` (full archives until
    a server says it applies deltas) or ``on`` (deltas, and a full archive whenever one
    is due)."""


def command(config: ClientConfig, args: argparse.Namespace) -> int:
    """``pullback-client check``: one line per problem (exit 2), then one ``warning:``
    line per warning and one ``note:`` line per note, or ``<config>: ok``."""
    result = check(config)
    if args.json:
        print_json(
            {
                "hostname": config.hostname,
                "problems": result.problems,
                "warnings": result.warnings,
                "notes": result.notes,
                "deltas": result.deltas,
            }
        )
        return EXIT_CONFIG if result.problems else EXIT_OK
    # escaped and cut here, whatever they quote (a path, a plugin's words, a probe's)
    for problem in result.problems:
        print(printable(problem, MAX_SAID))
    for warning in result.warnings:
        print(f"warning: {printable(warning, MAX_SAID)}")
    if result.problems:
        return EXIT_CONFIG
    for note in result.notes:  # (after the problems are mended: they come first)
        print(f"note: {printable(note, MAX_SAID)}")
    print(f"{config.path}: ok")
    return EXIT_OK


def _output_problems(config: ClientConfig) -> list[str]:
    """The metrics file and the file cache that the unit cannot write, and a metrics
    file the server's configuration on this machine names too."""
    problems: list[str] = []
    unit = "pullback-client.service"
    outputs = {"metrics_file": config.metrics_file}
    if config.incremental.mode is not IncrementalMode.OFF:  # the file cache, every run
        outputs["incremental.cache_dir"] = config.incremental.cache_dir / CACHE_NAME
    allowed = unit_writable_paths(unit) if any(outputs.values()) else None
    for setting, path in outputs.items():
        found = output_problem(setting, path, unit, allowed) if path is not None else None
        problems += [f"{config.path}: {found}"] if found else []
    shared = config.metrics_file and shared_metrics_file(config.metrics_file, SERVER_CONFIG)
    return problems + ([f"{config.path}: {shared}"] if shared else [])


MAX_SAID = 4000
"""Characters of one problem, warning or note ``check`` prints."""


def _setting_problems(config: ClientConfig) -> list[str]:
    """What is wrong with client.yaml's settings on this machine."""
    problems: list[str] = []
    compressor = compress_command(config.compression, config.compression_level)
    if compressor and not shutil.which(compressor[0]):
        problems.append(
            f"{config.path}: compression: {compressor[0]} is not installed "
            f"(apt install {compressor[0]})"
        )
    for key in ("archive_dir", "work_dir", "lock_dir"):
        path = getattr(config, key)
        if not writable_or_creatable(path):
            problems.append(f"{config.path}: {key}: {path} is not writable")
    problems += _output_problems(config)
    for directory in config.service_dirs:
        if not directory.is_dir():
            problems.append(f"{config.path}: service_dirs: {directory} does not exist")
    schema = load_schema("pullback.common", "client")
    data = load_validated(config.path, schema, allow_empty=True).data
    problems += secret_file_problems(config.path, schema, data)
    if not find_service_files(config.service_dirs):
        problems.append(
            f"{config.path}: service_dirs: no service.yaml found in "
            f"{', '.join(str(d) for d in config.service_dirs)}"
        )
    return problems


def _service_problems(service: Service, plugins: PluginSet) -> list[str]:
    """A service file's problems, its plugins' findings and its missing programs, each
    at the line of its task's section."""
    if service.broken:
        return [str(p) for p in service.problems]
    problems: list[str] = []
    tasks = make_tasks(service, Path("/nonexistent"), None, dry_run=True)
    for spec, task in zip(service.tasks, tasks, strict=True):
        where = f"{service.file}:{spec.line or 1}"
        for key, text in validate_task(plugins, task):
            line = spec.line_of(key)
            problems.append(
                f"{service.file}:{line}: {spec.key}.{text}"
                if key
                else f"{where}: {spec.key}: {text}"
            )
        problems.extend(f"{where}: {spec.key}: {m}" for m in spec.type.missing(spec.config))
        problems += secret_file_problems(
            Path(f"{service.file}:{spec.line or 1}"), spec.type.schema, spec.config, (spec.key,)
        )
    return problems


def _probe(service: Service, plugins: PluginSet, scratch: Path, result: CheckResult) -> None:
    """Let each task connect with its credentials (``pullback_probe``), as a run would."""
    tasks = make_tasks(service, scratch / service.name, None, dry_run=True)
    for spec, task in zip(service.tasks, tasks, strict=True):
        task.staging.mkdir(parents=True, exist_ok=True)
        where = f"{service.file}:{spec.line or 1}: {spec.key}"
        try:
            probe = plugins.call("probe", task)
        except Exception as exc:
            result.problems.append(f"{where}: cannot be probed: {describe(exc)}")
            continue
        if probe is None:
            continue
        if not isinstance(probe, ProbeResult):
            said = printable(type(probe).__name__, 100)
            result.problems.append(f"{where}: cannot be probed: the plugin returned a {said}")
            continue
        result.problems += [f"{where}: {p}" for p in as_lines(probe.problems)]
        result.warnings += [f"{where}: {w}" for w in as_lines(probe.warnings)]


CACHE_ROOM = 1 << 20
"""Free bytes beyond twice the file cache's size that its disk should have: each run
writes the new cache beside the old."""


def _cache_room(config: ClientConfig) -> str | None:
    """Words when the file cache's disk has no room for the next run's cache (twice
    its size and CACHE_ROOM): that run goes on without it, and the next is full
    (helper-165 F5: a full cache disk made every archive full while check said ok)."""
    cache = config.incremental.cache_dir
    try:
        size = (cache / CACHE_NAME).stat().st_size
    except OSError:
        size = 0
    try:
        free = room(cache).free
    except OSError:
        return None  # (not made yet: its parent's problems are said above)
    need = 2 * size + CACHE_ROOM
    if free >= need:
        return None
    return (
        f"incremental.cache_dir: {cache} has {human_size(free)} free; the file cache "
        f"needs about {human_size(need)}: without room each run writes none, and the "
        "next archive is a full one"
    )


def _deltas(config: ClientConfig, result: CheckResult) -> None:
    """Say whether the next run makes deltas; a note while ``auto`` waits for a server;
    a warning when the file cache's disk is short of room."""
    if config.incremental.mode is IncrementalMode.OFF:
        return
    short = _cache_room(config)
    if short:
        result.warnings.append(f"{config.path}: {short}")
    if makes_deltas(config):
        result.deltas = "on"
        return
    result.deltas = "waiting"
    result.notes.append(f"archives are full ones for now: {WAITING_FOR_SERVER}")


def _plugin_problem(config: ClientConfig, plugins: PluginSet, error: str) -> str:
    """A plugin error, under client.yaml's ``plugin_dirs:`` when that is where it is
    fixed; an installed plugin's (entry point) or a task type's names its plugin."""
    return f"{config.path}: plugin_dirs: {error}" if error in plugins.local_errors else error


def check(config: ClientConfig) -> CheckResult:
    """Every problem found in the configuration, services and plugins, and what the
    database tasks' servers say when asked with their credentials."""
    plugins = load_plugins(config.plugin_dirs)
    result = CheckResult([_plugin_problem(config, plugins, e) for e in plugins.errors])
    result.problems += _setting_problems(config)
    _deltas(config, result)
    with scratch.directory("check") as space:
        for service in discover(config.service_dirs, plugins):
            found = _service_problems(service, plugins)
            result.problems += found
            if not found:  # a service's warnings, like its probe's, once it has no problem
                result.warnings += [str(w) for w in service.warnings]
                _probe(service, plugins, space, result)
    return result
