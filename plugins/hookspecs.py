"""The hooks a pullback plugin implements: this file is the plugin author's reference.

docs/plugins.md walks through a complete plugin. A plugin is a Python module with
functions marked ``@hookimpl``; everything it needs is exported by ``pullback.plugins``::

    from pullback.plugins import Requirement, TaskError, TaskSkipped, TaskType, hookimpl

    @hookimpl
    def pullback_task_types():
        return [TaskType("redis", SCHEMA, requires=(Requirement(("redis-cli",), "redis-tools"),))]

    @hookimpl
    def pullback_dump(task):
        task.run(["redis-cli", "--rdb", task.staging / "dump.rdb"], timeout=3600)

Plugins are found in three places, all registered the same way: the built-in modules
(:data:`pullback.plugins.manager.BUILTIN_PLUGINS`), the ``pullback`` entry-point group of
installed distributions (entry-point names must be unique across distributions: a name
already loaded is skipped), and ``*.py`` files in the client's ``plugin_dirs``. A plugin
that fails to import, or has a ``@hookimpl`` that is not one of these hooks (or names an
argument its hook does not have), is not loaded at all; ``check`` says so.

**Tasks.** Every top-level key of a service.yaml except ``service`` is a *task*, handled
by the one plugin that declared that task type; only that plugin's hooks are called for
it, each with only the arguments it names. In ``pullback-client run``, per service:

1. :func:`pullback_validate` for every task (a problem, or a program of
   ``TaskType.requires`` missing: the task is not run);
2. :func:`pullback_prepare` for every task, in file order (e.g. stop containers);
3. :func:`pullback_dump` for every task, in file order (write the data), unless a
   prepare failed;
4. :func:`pullback_finish` for every task whose prepare was *called*, in reverse order,
   whatever happened in between: a failed dump, another plugin's crash, SIGTERM.

A task whose dump raises has its staging directory discarded, so a half-written dump
never reaches the archive; the other tasks' data is archived. A failing service never
stops the others. ``check`` calls validate and :func:`pullback_probe`; ``run --dry-run``
validate and :func:`pullback_plan`; ``restore`` the prepare and finish of the
``stops_service`` task types around every :func:`pullback_restore`.

**No time limit.** A hook runs until it returns (SIGTERM still ends it: it is raised as
``pullback.common.errors.Interrupted``, an ``Exception``: never swallow it; a hook that
does runs on, and the run or restore stops when it returns). ``task.run``
without ``timeout=`` waits for ever; the built-ins pass a ``timeout`` key of the section.

**Failing.** Raise :class:`pullback.plugins.task.TaskError` with a message an
administrator can act on; the task is reported failed with it. Raise
:class:`~pullback.plugins.task.TaskSkipped` in prepare or dump when the task cannot run
here: reported ``skipped: <message>`` (the service still counts as failed). A
``CommandError`` from ``task.run`` reads as the command, its exit code and last lines.
Any other exception is reported as a bug of the plugin, with its type (``KeyError:
'x'``; the traceback with ``-v``). Never call ``sys.exit()`` (it fails the task as a bug).
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("pullback")


@hookspec
def pullback_task_types():
    """Declare the task types this plugin handles.

    Returns a list of :class:`pullback.plugins.task.TaskType`:

    - ``name``: the service.yaml key (lower-case letters, digits, ``_`` and ``-``), also
      the task's directory in the archive, ``services/<service>/<name>/``;
    - ``schema``: the JSON Schema of the section, with ``default`` values (applied to
      ``task.config``), ``description`` texts and ``x-secret: true`` on values that must
      never be shown. Without one any mapping is accepted, with no defaults and nothing
      masked. ``load_plugin_schema`` reads only the built-ins' schemas: keep yours in
      code, or ``yaml.safe_load`` a file beside your module;
    - ``aliases``: other keys for the same task (``task.type`` is always ``name``);
    - ``description``: one line saying what it archives;
    - ``requires``: :class:`~pullback.plugins.task.Requirement` programs; without them
      the task is skipped in a run and ``check`` reports it (a restore does not check);
    - ``stops_service=True`` (or a function of the section returning True): the task's
      prepare stops the application and its finish starts it again; only such tasks'
      prepare and finish are called during a restore, around the restore hooks;
    - ``holds_data=False`` (or a function of the section returning False): its dump
      archives nothing, so a restore never calls its restore hook;
    - ``restores_below_target=True``: given a ``target``, your restore hook writes only
      below it or beside the live data (a database under a new name), so a restore below
      ``--target`` of such tasks does not stop the application. Leave it False (the
      default) when your restore may touch anything live: the application is then
      stopped first, as without ``--target``.

    A key two third-party plugins declare is an error naming both, and neither handles
    it; a built-in plugin's key declared again keeps its built-in plugin (the other
    declaration is the error).
    """


@hookspec(firstresult=True)
def pullback_validate(task):
    """Check a task beyond its schema, without changing anything.

    Called by ``pullback-client check``, by ``run --dry-run`` and at the start of every
    run (not by restore), ``task.staging`` not made. Look for what an administrator can
    fix: a path that does not exist, a password file that is world-readable (a missing
    program is better said by ``TaskType.requires``). Do not connect to servers here
    (:func:`pullback_probe` does).

    Returns a list of problems (empty or None when the task is fine): strings, or
    :class:`~pullback.plugins.task.KeyProblem` for one key of the section
    (``KeyProblem(("paths", 0), "database /srv/a.db is a directory")``: ``check`` then
    names ``sqlite.paths[0]`` and its line). Any problem and the service is not run.
    Raising counts as the problem ``validate failed: ...``.
    """


@hookspec(firstresult=True)
def pullback_plan(task):
    """Describe what :func:`pullback_dump` would do, for ``run --dry-run``.

    Returns a list of short lines, e.g. ``["would archive 1,204 files (3.1 GiB) from /srv"]``
    (None prints ``(no plan available)``). Change nothing; ``task.staging`` is not made.
    """


@hookspec(firstresult=True)
def pullback_prepare(task):
    """Bring the application into a state where its data can be copied consistently.

    Typical work: stop containers or units, switch on a maintenance mode, flush caches.
    Record in ``task.state`` what must be undone, *before* doing it (a half-done prepare
    is still finished): :func:`pullback_finish` gets the same ``task``. What you stop,
    say with ``task.stopping(name)`` just before stopping it: it lands in
    ``task.state["stopped"]`` and in the client's record on disk, so a run killed outright
    before its finish has it started again (see :func:`pullback_finish`). Raising fails the
    task and no dump of the service runs (finish still runs); ``TaskSkipped`` skips only
    this task. In a restore it is called only for ``stops_service`` task types (not in a
    dry run); raising there means nothing is restored, and what stopped is started again.
    """


@hookspec(firstresult=True)
def pullback_dump(task):
    """Write the task's data.

    Either write files below ``task.staging`` (added to the archive under
    ``task.arcdir``, ``services/<service>/<type>/``, once the dump returned), or stream
    existing files straight into the archive with ``task.add_tree(path)`` (no copy is
    made), or both. Both are counted in ``task.stats`` for you: do not add to its
    ``files`` or ``bytes``; say what the run's log and the sidecar should warn of with
    ``task.warn(text)`` (a task keeps its first 1,000 warnings and counts the rest;
    ``task.stats.warnings.append`` keeps one for the sidecar alone). Pass ``timeout=``
    to every ``task.run``. Raise to fail: the staging directory is then discarded
    (what ``add_tree`` already streamed stays in the archive, the task marked failed);
    ``TaskSkipped`` reports the task skipped; ``TaskPartial`` (part of what it should
    was written: one database of several) keeps what was staged for the archive and
    reports the task failed with its message.
    """


@hookspec(firstresult=True)
def pullback_finish(task, failed):
    """Undo what :func:`pullback_prepare` did: start again what was stopped.

    Called for every task whose prepare was called (even if it raised), in reverse order,
    after the dumps, also when the run is interrupted (a SIGTERM then waits until every
    finish returned). ``failed`` is True when a task of the service failed (in a restore:
    when anything failed so far) or the run is being cut short. Must not assume the dump
    ran. Raising marks the task failed, but the remaining finishes still run.

    After a run killed before its finish (``kill -9``, systemd's stop timeout, a power
    cut) it is called once more by ``pullback-client start-stopped`` (the client unit's
    ExecStopPost=, and the start of the next run or restore), ``failed=True``, on a task
    made anew whose ``state`` holds only ``stopped``, the names given to
    ``task.stopping``: start those, and nothing the state no longer says.
    """


@hookspec(firstresult=True)
def pullback_probe(task):
    """Connect with the task's credentials and say what the next run or restore would trip
    over, changing nothing. Called by ``pullback-client check`` for services without
    problems (``task.staging`` is a scratch directory).

    Returns a :class:`pullback.plugins.task.ProbeResult`: ``problems`` for what would make
    the dump fail (the server refuses the login, a database is missing), ``warnings`` for
    what a restore would lack (the role cannot create databases). None when there is
    nothing to probe. Raising counts as the problem ``cannot be probed: ...``.
    """


@hookspec(firstresult=True)
def pullback_restore(task, source, target, dry_run, plan):
    """Put a dumped task back: re-import a database, copy files to their place.

    - ``source``: a :class:`~pathlib.Path`, the task's ``services/<service>/<type>/``
      directory of the unpacked snapshot (staged files at their relative paths,
      ``add_tree(path)``'s at ``source / path.lstrip("/")``). Read it, never change it.
    - ``target``: None to restore to the original place, or an absolute Path
      (``--target DIR``, made unless dry run) to restore below instead, as
      ``target / path.lstrip("/")``, touching nothing live.
    - ``dry_run``: True to only say what would be done (the same as ``plan.dry_run``).
    - ``plan``: a :class:`pullback.plugins.task.RestorePlan`. Record each step with
      ``plan.step(task.log, text, destructive=...)`` and do it only when that returns True
      (False in a dry run, which prints every step). Unless ``plan.replace``
      (``--replace``), restore *beside* the live data (a new file or database, named
      with ``plan.stamp``) and say where with ``plan.note(task.log, text)``; with it, run
      a preflight first (the dump is complete, the tool has every privilege it needs)
      and keep what you replace (renamed with ``plan.stamp``, or copied below
      ``plan.safety_dir``). A file of ``source`` that a note names for the administrator
      to use later: name what ``hand_over(task.type, plan, path, source)`` returns (with
      ``--from ARCHIVE``, ``source`` is removed as the restore ends; it moves the file out
      first), and call ``check_hand_over(plan)`` before restoring anything (both from
      ``pullback.plugins``).

    The return value is ignored. Not called for a task that holds no data
    (``TaskType.holds_data``) or whose directory the snapshot lacks. Raise (with the
    failing tool's own last lines) to fail this task: the service's other tasks are still
    restored, and the restore exits 1. A failure must leave working data behind.
    Hooks written before ``plan`` existed keep working: pluggy passes only the arguments
    a hook names.
    """
