"""The hooks a pullback plugin implements: this file is the plugin author's reference.

A plugin is a Python module (or any object) with functions marked ``@hookimpl``::

    from pullback.plugins import TaskType, hookimpl, load_plugin_schema

    @hookimpl
    def pullback_task_types():
        return [TaskType("redis", schema={"type": "object", "properties": {...}})]

    @hookimpl
    def pullback_dump(task):
        task.run(["redis-cli", "--rdb", task.staging / "dump.rdb"])

Plugins are found in three places, all registered the same way: the built-in modules
(:data:`pullback.plugins.manager.BUILTIN_PLUGINS`), the ``pullback`` entry-point group of
installed distributions, and ``*.py`` files in the client's ``plugin_dirs``.

**Tasks.** Every top-level key of a service.yaml except ``service`` is a *task*, handled
by the one plugin that declared that task type. For each service, pullback calls the
stage hooks *of that plugin only*, in this order:

1. :func:`pullback_validate` for every task (static checks; nothing is changed; and
   :func:`pullback_probe`, which may connect, from ``pullback-client check``);
2. :func:`pullback_prepare` for every task, in file order (e.g. stop containers);
3. :func:`pullback_dump` for every task, in file order (write the data);
4. :func:`pullback_finish` for every task whose prepare was *called*, in reverse order,
   whatever happened in between: a failed dump, another plugin's crash, SIGTERM.

If any prepare fails, no dump runs for that service. A task whose dump raises has its
staging directory discarded, so a half-written dump never reaches the archive. A failing
service never stops the others.

Hooks receive a :class:`pullback.plugins.task.Task` holding the task's validated section
(``task.config``, defaults applied), its staging directory, a command runner that masks
the service's secrets, a logger, and a ``state`` dict that lives from prepare to finish.
To fail, raise :class:`pullback.plugins.task.TaskError` (or any exception) with a message
an administrator can act on.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("pullback")


@hookspec
def pullback_task_types():
    """Declare the task types this plugin handles.

    Returns a list of :class:`pullback.plugins.task.TaskType`: the service.yaml key, its
    aliases, and the JSON Schema that validates the section (with ``default`` values,
    ``description`` texts, and ``x-secret: true`` on values that must never be shown).
    Two plugins declaring the same key is a configuration error. ``stops_service=True``:
    the task's prepare stops the application and its finish starts it again (a restore
    is wrapped in them); ``holds_data=False`` (or a function of the task's section
    returning False): its dump archives nothing, so a restore looks for nothing of it.
    """


@hookspec(firstresult=True)
def pullback_validate(task):
    """Check a task beyond its schema, without changing anything.

    Called by ``pullback-client check``, by ``run --dry-run`` and at the start of every run.
    Look for what an administrator can fix: a path that does not exist, a tool that is not
    installed, a password file that is world-readable. Do not connect to servers here.

    Returns a list of problem strings (empty or None when the task is fine).
    """


@hookspec(firstresult=True)
def pullback_plan(task):
    """Describe what :func:`pullback_dump` would do, for ``run --dry-run``.

    Returns a list of short lines, e.g. ``["would archive 1,204 files (3.1 GiB) from /srv"]``.
    """


@hookspec(firstresult=True)
def pullback_prepare(task):
    """Bring the application into a state where its data can be copied consistently.

    Typical work: stop containers or units, switch on a maintenance mode, flush caches.
    Record in ``task.state`` what must be undone: :func:`pullback_finish` gets the same
    ``task``. Raise to fail the service (its dumps are then skipped, finish still runs).
    """


@hookspec(firstresult=True)
def pullback_dump(task):
    """Write the task's data.

    Either write files below ``task.staging`` (they are added to the archive under
    ``services/<service>/<task type>/`` once the dump succeeded), or stream existing files
    straight into the archive with ``task.add_tree(path)`` (no copy is made). Count what you
    wrote in ``task.stats`` if you streamed; staged files are counted for you. Raise to fail.
    """


@hookspec(firstresult=True)
def pullback_finish(task, failed):
    """Undo what :func:`pullback_prepare` did: start again what was stopped.

    Called for every task whose prepare was called (even if it raised), in reverse order,
    after the dumps, also when the run is interrupted. ``failed`` is True when the service
    did not succeed. Must not assume the dump ran. Raising marks the service failed, but the
    remaining finishes still run.
    """


@hookspec(firstresult=True)
def pullback_probe(task):
    """Connect with the task's credentials and say what the next run or restore would trip
    over, changing nothing. Called by ``pullback-client check``.

    Returns a :class:`pullback.plugins.task.ProbeResult`: ``problems`` for what would make
    the dump fail (the server refuses the login, a database is missing), ``warnings`` for
    what a restore would lack (the role cannot create databases). None when there is
    nothing to probe.
    """


@hookspec(firstresult=True)
def pullback_restore(task, source, target, dry_run, plan):
    """Put a dumped task back: re-import a database, copy files to their place.

    ``source`` is the restored ``services/<service>/<task type>/`` directory of a snapshot,
    ``target`` an alternative directory to restore into instead of the live location (or
    None), ``dry_run`` True to only say what would be done. ``plan`` is a
    :class:`pullback.plugins.task.RestorePlan`: a database restore must not destroy what it
    cannot rebuild. Unless ``plan.replace``, restore *beside* the live data (a new
    database); with it, run a preflight first (the dump is complete, the role has every
    privilege the restore needs) and keep what you replace. Record each step with
    ``plan.step(task.log, text, destructive=...)`` and do it only when that returns True.
    Raise (with the failing tool's own last lines) to fail; a failure must leave a
    working database behind. Hooks written before ``plan`` existed keep working: pluggy
    passes only the arguments a hook names.
    """
