"""Finding plugins and routing each task to the one plugin that handles it."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pluggy

from ..common.errors import PullbackError
from ..common.log import get_logger
from . import hookspecs
from .task import Task, TaskType

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

    def lookup(self, key: str) -> TaskType | None:
        """The task type for a service.yaml key (aliases resolved), or None."""
        entry = self.types.get(key)
        return entry[0] if entry else None

    def known_keys(self) -> list[str]:
        return sorted(self.types)

    def call(self, stage: str, task: Task, **kwargs):
        """Call hook ``pullback_<stage>`` on the plugin that owns ``task.type`` only.

        Returns the hook's result (None when that plugin does not implement the stage).
        """
        owner = self.types[task.type][1]
        others = [p for p in self.pm.get_plugins() if p is not owner]
        caller = self.pm.subset_hook_caller(f"pullback_{stage}", remove_plugins=others)
        try:
            return caller(task=task, **kwargs)
        except SystemExit as exc:
            # a plugin's sys.exit() is its failure, not the end of the run (an outside
            # plugin author's ended every later service's backup, exit 3, no message)
            raise PluginExit(f"the plugin called sys.exit({exc.code!r})") from None

    def implements(self, stage: str, task: Task) -> bool:
        """Whether the plugin that owns ``task.type`` implements ``pullback_<stage>``."""
        owner = self.types[task.type][1]
        hook = getattr(self.pm.hook, f"pullback_{stage}")
        return any(impl.plugin is owner for impl in hook.get_hookimpls())


class PluginExit(PullbackError):
    """A plugin's hook called ``sys.exit()``: its task fails, the run goes on."""


def _load_file(path: Path) -> object:
    name = f"pullback_local_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _register(
    pm: pluggy.PluginManager, plugin_dirs: Iterable[Path], entry_points: bool
) -> list[str]:
    """Register the built-in, installed and local plugins; return what failed to load."""
    errors = []
    for name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if entry_points:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:  # a broken third-party distribution must not stop backups
            errors.append(f"entry point plugin failed to load: {exc}")
    for directory in plugin_dirs:
        if not directory.is_dir():
            errors.append(f"plugin directory {directory} does not exist")
            continue
        for path in sorted(directory.glob("*.py")):
            try:
                pm.register(_load_file(path), name=str(path))
            except Exception as exc:
                errors.append(f"plugin {path} failed to load: {type(exc).__name__}: {exc}")
    while True:  # a plugin with a misspelled hook is dropped, not half-used
        try:
            pm.check_pending()
            return errors
        except pluggy.PluginValidationError as exc:
            errors.append(f"plugin {pm.get_name(exc.plugin)}: {exc}")
            pm.unregister(exc.plugin)


def _collect_task_types(plugins: PluginSet) -> None:
    """Ask every plugin for its task types; a key two plugins declare is an error."""
    pm = plugins.pm
    for impl in pm.hook.pullback_task_types.get_hookimpls():
        plugin = impl.plugin
        try:
            declared = cast(list[TaskType], impl.function() or [])
        except Exception as exc:
            plugins.errors.append(
                f"plugin {pm.get_name(plugin)}: pullback_task_types failed: {exc}"
            )
            continue
        for task_type in declared:
            for key in (task_type.name, *task_type.aliases):
                if key in plugins.types:
                    other = pm.get_name(plugins.types[key][1])
                    plugins.errors.append(
                        f"plugin {pm.get_name(plugin)}: task '{key}' is already handled by {other}"
                    )
                    continue
                plugins.types[key] = (task_type, plugin)


def load_plugins(plugin_dirs: Iterable[Path] = (), entry_points: bool = True) -> PluginSet:
    """Register the built-in, installed and local plugins and collect their task types.

    A plugin that fails to load or declares a task type already taken is recorded in
    ``errors`` (services needing it then fail alone); it never stops the others.
    """
    pm = pluggy.PluginManager("pullback")
    pm.add_hookspecs(hookspecs)
    plugins = PluginSet(pm)
    plugins.errors += _register(pm, plugin_dirs, entry_points)
    _collect_task_types(plugins)
    for error in plugins.errors:
        log.error("%s", error)
    return plugins
