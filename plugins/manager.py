"""Finding plugins and routing each task to the one plugin that handles it."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import importlib.metadata
import itertools
import os
import re
import sys
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pluggy

from ..common import schema as schemas
from ..common import secrets, validated
from ..common.errors import Interrupted, PullbackError, describe
from ..common.fsutil import read_regular
from ..common.log import get_logger
from ..common.signals import raise_if_swallowed, witnessed
from ..common.text import printable
from . import hookspecs, process_state
from .task import ProbeResult, Requirement, Task, TaskType

log = get_logger("plugins")

#: The built-in plugins, registered exactly like third-party ones.
BUILTIN_PLUGINS = (
    "pullback.plugins.files",
    "pullback.plugins.command",
    "pullback.plugins.postgresql",
    "pullback.plugins.mariadb",
    "pullback.plugins.sqlite",
    "pullback.plugins.docker",
    "pullback.plugins.systemd",
    "pullback.plugins.mongodb",
    "pullback.plugins.influxdb",
    "pullback.plugins.univention",
)

ENTRY_POINT_GROUP = "pullback"


@dataclass
class PluginSet:
    """The loaded plugins, the task types they declared, and what went wrong loading them."""

    pm: pluggy.PluginManager
    types: dict[str, tuple[TaskType, object]] = field(default_factory=dict)
    """Task key or alias -> (its TaskType, the plugin that declared it)."""
    errors: list[str] = field(default_factory=list)
    """Every plugin that failed to load, and every task type refused (one line each)."""
    local_errors: list[str] = field(default_factory=list)
    """Those of :attr:`errors` that client.yaml's ``plugin_dirs:`` is the place to fix (a
    directory missing, a file of one that fails to load)."""

    def lookup(self, key: str) -> TaskType | None:
        """The task type for a service.yaml key (aliases resolved), or None."""
        entry = self.types.get(key)
        return entry[0] if entry else None

    def known_keys(self) -> list[str]:
        return sorted(self.types)

    def call(self, stage: str, task: Task, **kwargs):
        """Call hook ``pullback_<stage>`` on the plugin that owns ``task.type`` only.

        Returns the hook's result (None when that plugin does not implement the stage).
        Raises what the hook raised (PluginExit for its sys.exit()), and Interrupted when a
        SIGTERM or SIGINT arrived while it ran, even one the hook caught.
        """
        owner = self.types[task.type][1]
        others = [p for p in self.pm.get_plugins() if p is not owner]
        caller = self.pm.subset_hook_caller(f"pullback_{stage}", remove_plugins=others)
        kept = process_state.Kept(lambda words: task.log.warning("%s", words))
        parent = os.getpid()
        try:
            with kept:
                try:
                    result = _materialized(stage, caller(task=task, **kwargs))
                except BaseException as ending:
                    process_state.end_if_forked(parent, f"pullback_{stage}", ending)
                    raise
                process_state.end_if_forked(parent, f"pullback_{stage}", None)
        except Interrupted:
            raise
        except Exception:
            _raise_if_signalled(kept)  # a signal the hook caught and turned into its error
            raise
        except BaseException as exc:
            _raise_if_signalled(kept)  # (a real Ctrl-C under default_int_handler)
            raise PluginExit(_not_an_error(exc)) from None
        _raise_if_signalled(kept)  # a signal the hook caught and went on
        return result

    def implements(self, stage: str, task: Task) -> bool:
        """Whether the plugin that owns ``task.type`` implements ``pullback_<stage>``."""
        owner = self.types[task.type][1]
        hook = getattr(self.pm.hook, f"pullback_{stage}")
        return any(impl.plugin is owner for impl in hook.get_hookimpls())


MAX_ITEMS = 10_000
"""Items of an iterator a hook returns that are taken (:func:`_materialized`), and
lines :func:`as_lines` keeps."""


LINES_STAGES = ("validate", "plan")
"""The stages whose result is read as lines (:func:`as_lines`); a probe's is a
:class:`~pullback.plugins.task.ProbeResult` of two such lists."""


def _materialized(stage: str, result: object) -> object:
    """A hook's lines taken while its call lasts: an iterator (a generator, ``map``)
    that ``validate`` or ``plan`` returns, or a probe's problems or warnings, becomes a
    list of at most :data:`MAX_ITEMS` + 1 items (:func:`as_lines` says the cut), so its
    code runs under the call's rules, not later where the lines are read. Any other
    result is returned as it is (a stream a dump returns is not read)."""
    if stage in LINES_STAGES:
        return _taken(result)
    if isinstance(result, ProbeResult):
        with contextlib.suppress(AttributeError, dataclasses.FrozenInstanceError):
            result.problems = _taken(result.problems)  # type: ignore[assignment]
            result.warnings = _taken(result.warnings)  # type: ignore[assignment]
    return result


def _taken(found: object) -> object:
    if not isinstance(found, Iterator):
        return found
    try:
        return list(itertools.islice(found, MAX_ITEMS + 1))
    finally:
        if isinstance(found, types.GeneratorType):
            found.close()


MAX_LINE = 2000
"""Characters of one line a hook returns (a problem, a warning, a plan line) kept."""


def as_lines(found: object) -> list[str]:
    """What a hook returned as lines (validate's problems, a plan, a probe's problems or
    warnings): None none, a string one line (not one per character), any other iterable
    one line per item, anything else one line; each :func:`printable`, at most
    :data:`MAX_LINE` characters; at most :data:`MAX_ITEMS` lines, and one that says
    the cut."""
    if found is None:
        return []
    if isinstance(found, str | bytes) or not isinstance(found, Iterable):
        found = [found]
    # masked before the cut: a secret the cut would split is no longer one the mask knows
    lines = list(itertools.islice(found, MAX_ITEMS + 1))
    said = [printable(secrets.mask(str(line)), MAX_LINE) for line in lines[:MAX_ITEMS]]
    if len(lines) > MAX_ITEMS:
        said.append(f"(more than {MAX_ITEMS:,} lines: the rest not shown)")
    return said


class PluginExit(PullbackError):
    """A plugin's hook called ``sys.exit()``, or raised another exception that is not an
    error (``KeyboardInterrupt``, ``GeneratorExit``: a signal reaches pullback as
    :class:`Interrupted`, never as these): its task fails, the run goes on."""


def _raise_if_signalled(kept: process_state.Kept) -> None:
    """Raise Interrupted when a SIGTERM, SIGINT or SIGHUP came while the hook ran: one
    the guard received, or one a handler of the hook's own did (:mod:`.process_state`);
    the guard then holds it as received (raised at once, or where a shielded block
    ends)."""
    if kept.signal is not None:
        witnessed(kept.signal)
    raise_if_swallowed()


def _not_an_error(exc: BaseException) -> str:
    """What a plugin did that ended its hook by a BaseException that is no Exception
    (an outside plugin author's sys.exit() ended every later service's backup, exit 3,
    no message; a KeyboardInterrupt ended the run as if Ctrl-C was pressed)."""
    if isinstance(exc, SystemExit):
        return f"the plugin called sys.exit({exc.code!r})"
    return f"the plugin raised {type(exc).__name__}"


MAX_PLUGIN_BYTES = 16 << 20
"""A plugin file of ``plugin_dirs`` is read up to this size."""


def _load_file(path: Path) -> object:
    """The module of a plugin file of ``plugin_dirs``, run from the bytes read through
    the descriptor that was checked (never a cached ``__pycache__`` file, which another
    check would have to vouch for). Raises ImportError when it cannot be read or another
    user may change it (it would run as root), and what running it raises."""
    try:
        source = read_regular(path, MAX_PLUGIN_BYTES, obeyed=True)
    except (OSError, ValueError) as exc:
        raise ImportError(str(exc) if isinstance(exc, ValueError) else describe(exc)) from None
    name = f"pullback_local_plugin_{path.stem}"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 - the plugin
    return module


def _register_one(pm: pluggy.PluginManager, plugin: object, name: str) -> str | None:
    """Register ``plugin`` as ``name``; None, or why it was refused. A refused plugin
    leaves nothing behind (pluggy before 1.6 kept the hooks it had added before the one
    whose arguments do not match the spec, e.g. ``pullback_dump(tsk)``)."""
    try:
        pm.register(plugin, name=name)
    except Exception as exc:
        if pm.get_plugin(name) is plugin:
            pm.unregister(plugin)
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return None


def _entry_point_origin(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    of = f" of distribution {dist.name} {dist.version}" if dist is not None else ""
    return f"entry point '{ep.name}' ({ep.value}){of}"


def _load_entry_points(pm: pluggy.PluginManager) -> list[str]:
    """Register the installed plugins (group ``pullback``) one by one, as pluggy's
    ``load_setuptools_entrypoints`` does (an entry point's name is its plugin's name; a
    blocked name is skipped): one that fails to import or register is reported with its
    distribution and left out, the others load. Of two distributions with an entry point
    of the same name, the first (in sys.path's order) loads, and the second is an error
    naming both."""
    errors = []
    seen: dict[str, str] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        origin = _entry_point_origin(ep)
        if pm.is_blocked(ep.name):
            continue
        if ep.name in seen:
            errors.append(f"{origin}: not loaded, {seen[ep.name]} has the same name")
            continue
        seen[ep.name] = origin
        if pm.get_plugin(ep.name) is not None:
            errors.append(f"{origin}: not loaded, its name is a built-in plugin's")
            continue
        try:
            plugin = ep.load()
        except Interrupted:
            raise
        except BaseException as exc:  # a broken distribution must not stop backups
            errors.append(f"{origin} failed to load: {type(exc).__name__}: {exc}")
            continue
        refused = _register_one(pm, plugin, ep.name)
        if refused:
            errors.append(f"{origin} failed to register: {refused}")
    return errors


def _load_directories(pm: pluggy.PluginManager, plugin_dirs: Iterable[Path]) -> list[str]:
    """Register every ``*.py`` of ``plugin_dirs`` (client.yaml), named by its path."""
    errors = []
    for directory in plugin_dirs:
        if not directory.is_dir():
            errors.append(f"plugin directory {directory} does not exist")
            continue
        for path in sorted(directory.glob("*.py")):
            try:
                refused = _register_one(pm, _load_file(path), str(path))
            except Interrupted:
                raise
            except BaseException as exc:  # (its sys.exit(), a KeyboardInterrupt it raised)
                refused = f"{type(exc).__name__}: {exc}"
            if refused:
                errors.append(f"plugin {path} failed to load: {refused}")
    return errors


def _register(plugins: PluginSet, plugin_dirs: Iterable[Path], entry_points: bool) -> None:
    """Register the built-in, installed and local plugins; record what failed to load."""
    pm = plugins.pm
    for name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if entry_points:
        plugins.errors += _load_entry_points(pm)
    local = _load_directories(pm, plugin_dirs)
    plugins.errors += local
    plugins.local_errors += local
    while True:  # a plugin with a misspelled hook is dropped, not half-used
        try:
            pm.check_pending()
            return
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin) or "?"
            error = f"plugin {name}: {_hook_problem(exc)}"
            plugins.errors.append(error)
            if "/" in name and name.endswith(".py"):  # a file of plugin_dirs: fixed there
                plugins.local_errors.append(error)
            pm.unregister(exc.plugin)


KNOWN_HOOKS = sorted(name for name in vars(hookspecs) if name.startswith("pullback_"))
"""The hooks a plugin may implement (:mod:`.hookspecs`)."""


def _hook_problem(exc: pluggy.PluginValidationError) -> str:
    """Why pluggy refused a plugin, in words that name the hook and, for one it does not
    know, the known hook it may have meant (not pluggy's ``<module ...>``)."""
    unknown = [
        name for name in dir(exc.plugin) if name.startswith("pullback_") and name not in KNOWN_HOOKS
    ]
    if not unknown:
        return printable(exc, MAX_LINE)
    said = []
    for name in unknown:
        close = difflib.get_close_matches(name, KNOWN_HOOKS, n=1)
        said.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return f"unknown hook {', '.join(said)}; the hooks are {', '.join(KNOWN_HOOKS)}"


TASK_NAME = re.compile(r"[a-z][a-z0-9_]*(-[a-z0-9_]+)*")
"""What a task type's name and each alias must be: the service.yaml key, and the name of
the task's staging directory and of its directory in the archive (never a path)."""
MAX_TASK_NAME = 64


def _name_problem(task_type: TaskType) -> str | None:
    if not isinstance(task_type.aliases, (tuple, list)):
        return f"task '{task_type.name}': aliases must be a tuple of names"
    for key in (task_type.name, *task_type.aliases):
        if not isinstance(key, str) or len(key) > MAX_TASK_NAME or not TASK_NAME.fullmatch(key):
            return (
                f"task name {key!r} refused: a task name is lower-case letters, digits, "
                f"'_' and '-', starts with a letter, at most {MAX_TASK_NAME} characters"
            )
    return None


def _shape_problem(schema: dict, where: str = "") -> str | None:
    """pullback's own walks of a schema (defaults, secrets, backup-suite notes) read
    every entry of ``properties`` as a mapping: ``true`` there passes JSON Schema's
    check but not theirs."""
    properties = schema.get("properties", {})
    for key, sub in properties.items() if isinstance(properties, dict) else ():
        if not isinstance(sub, dict):
            return f"{where}properties.{key} is {sub!r}, expected a mapping"
        problem = _shape_problem(sub, f"{where}properties.{key}.")
        if problem:
            return problem
    for key in ("items", "additionalProperties"):
        sub = schema.get(key)
        problem = _shape_problem(sub, f"{where}{key}.") if isinstance(sub, dict) else None
        if problem:
            return problem
    return None


def _default_problem(schema: dict, cls, where: str = "") -> str | None:
    """The first ``default`` of a property that its own schema refuses (pullback fills
    defaults in: a plugin's ``{"type": "string", "default": 5}`` reached its hook as an
    int), as ``properties.KEY.default: why``; None when every one is valid."""
    properties = schema.get("properties", {})
    for key, sub in properties.items() if isinstance(properties, dict) else ():
        here = f"{where}properties.{key}"
        if "default" in sub:
            try:
                error = next(iter(cls(sub).iter_errors(sub["default"])), None)
            except Exception:  # a $ref into the whole schema: not judged alone
                error = None
            if error is not None:
                said = printable(error.message, 200)
                return f"{here}.default: {said}"
        problem = _default_problem(sub, cls, f"{here}.")
        if problem:
            return problem
    return None


def _schema_problem(schema: object) -> str | None:
    """None when ``schema`` is a valid JSON Schema (its draft by ``$schema``, 2020-12
    without, as :func:`pullback.common.schema.validate` reads it) that pullback can walk;
    else what is wrong. A valid one is recorded (common/validated.py): a run that finds it
    there does not import the validator for it."""
    if not isinstance(schema, dict):
        return f"its schema is {type(schema).__name__}, expected a mapping"
    seen_valid = validated.fingerprint("task-schema", {}, schema)
    if validated.known(seen_valid):
        return None
    jsonschema = schemas.jsonschema_module()
    try:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        return f"its schema is invalid: {exc.message}"
    except Exception as exc:
        return f"its schema is invalid: {type(exc).__name__}: {exc}"
    problem = _shape_problem(schema) or _default_problem(schema, cls)
    if problem:
        return f"its schema is invalid: {problem}"
    validated.remember(seen_valid)
    return None


def _task_type_problem(task_type: object, builtin: bool) -> str | None:
    """Why ``task_type`` cannot be used, or None. The built-in plugins' schemas are
    checked by the test suite, not on every load."""
    if not isinstance(task_type, TaskType):
        return f"pullback_task_types returned {task_type!r}, expected TaskType objects"
    problem = _name_problem(task_type)
    if problem is None and not all(isinstance(r, Requirement) for r in task_type.requires):
        problem = "requires must be Requirement objects"
    if problem is None and not builtin:
        problem = _schema_problem(task_type.schema)
    return None if problem is None else f"task '{task_type.name}': {problem}"


def _declared(plugins: PluginSet) -> list[tuple[TaskType, object]]:
    """Every usable task type each plugin declares, with its plugin; what is wrong with
    the others goes to ``errors``, naming the plugin and the task type."""
    pm = plugins.pm
    found = []
    for impl in pm.hook.pullback_task_types.get_hookimpls():
        name = pm.get_name(impl.plugin)
        try:
            declared = impl.function() or []
        except Interrupted:
            raise
        except Exception as exc:
            plugins.errors.append(f"plugin {name}: pullback_task_types failed: {exc}")
            continue
        except BaseException as exc:
            plugins.errors.append(
                f"plugin {name}: pullback_task_types failed: {_not_an_error(exc)}"
            )
            continue
        if not isinstance(declared, (list, tuple)):
            declared = [declared]  # "not a TaskType", below
        for task_type in declared:
            problem = _task_type_problem(task_type, builtin=name in BUILTIN_PLUGINS)
            if problem:
                plugins.errors.append(f"plugin {name}: {problem}")
            else:
                found.append((cast(TaskType, task_type), impl.plugin))
    return found


def _owner(
    plugins: PluginSet, key: str, claims: list[tuple[TaskType, object]]
) -> tuple[TaskType, object] | None:
    """Who handles ``key`` that the plugins in ``claims`` declare (an error when more
    than one does): a built-in plugin keeps its keys, a third-party declaration of one is
    the error; of third-party plugins alone, none handles it."""
    if len(claims) == 1:
        return claims[0]
    pm = plugins.pm
    builtin = [claim for claim in claims if pm.get_name(claim[1]) in BUILTIN_PLUGINS]
    if len(builtin) == 1:
        keeper = pm.get_name(builtin[0][1])
        for _, plugin in claims:
            if plugin is not builtin[0][1]:
                plugins.errors.append(
                    f"plugin {pm.get_name(plugin)}: task '{key}' is already handled by "
                    f"{keeper} (built in): its declaration is ignored"
                )
        return builtin[0]
    names = " and ".join(str(pm.get_name(plugin)) for _, plugin in claims)
    plugins.errors.append(f"task '{key}' is declared by {names}: none of them handles it")
    return None


def _collect_task_types(plugins: PluginSet) -> None:
    """Ask every plugin for its task types, and give each key (name or alias) to the one
    plugin that declares it. A task type with a bad name or schema is refused (an error
    naming the plugin and the type). A key several plugins declare is an error: it stays
    a built-in plugin's when one of them is built in, else none handles it (the services
    using it fail, as with an unknown task). A task type that lost its own name to that
    loses its aliases too: its tasks are routed by that name."""
    claims: dict[str, list[tuple[TaskType, object]]] = {}
    for task_type, plugin in _declared(plugins):
        for key in dict.fromkeys((task_type.name, *task_type.aliases)):
            claims.setdefault(key, []).append((task_type, plugin))
    for key, claimed in claims.items():
        owner = _owner(plugins, key, claimed)
        if owner is not None:
            plugins.types[key] = owner
    for key, (task_type, _) in list(plugins.types.items()):
        routed = plugins.types.get(task_type.name)
        if routed is None or routed[0] is not task_type:
            del plugins.types[key]


def load_plugins(plugin_dirs: Iterable[Path] = (), entry_points: bool = True) -> PluginSet:
    """Register the built-in, installed and local plugins and collect their task types.

    Installed plugins (entry points) load one by one. A plugin that fails to load or to
    register (a hook whose arguments do not match its spec), a task type with a bad name
    or schema, and a task key two plugins declare are recorded in ``errors`` and logged
    (once per load); the services needing them then fail alone, as with an unknown task,
    and the other plugins and task types are used. A built-in plugin's task keys stay its
    own: a third-party plugin declaring one is the error.
    """
    pm = pluggy.PluginManager("pullback")
    pm.add_hookspecs(hookspecs)
    plugins = PluginSet(pm)
    _register(plugins, plugin_dirs, entry_points)
    _collect_task_types(plugins)
    for error in plugins.errors:
        log.error("%s", error)
    return plugins
