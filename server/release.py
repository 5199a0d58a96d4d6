"""``pullback-server release HOST [--copy]``: end the ransomware guard's hold on a host
(or on its second copy); for a host disabled in server.yaml, accept too the last pull a
run named (failed, or cut short) of a machine that is gone.

The guard (:mod:`.guard`) held forget and prune because the host's newest snapshot
changed too much from the last one judged normal. Releasing accepts the held snapshot:
the next ``maintain`` compares the newest snapshot against it and, if that is normal,
forgets by the retention policy again.

A disabled host's pulls count only when a run named it (``pull --host OLD``, a last
pull before the machine goes); one that failed, or was killed or stopped, counted until
a pull of it passed, which for a machine gone for good never comes (helper-144 F2).
Releasing such a host accepts that pull: its row is ``disabled`` again. An enabled
host's failed pull is not accepted: the next pull that passes ends it.
"""

from __future__ import annotations

import argparse

from ..common.errors import EXIT_FAILED, EXIT_OK, UsageError
from ..common.outcome import Status
from ..common.text import printable
from . import journal, status_file
from .config import HostConfig, ServerConfig


def command(config: ServerConfig, args: argparse.Namespace) -> int:
    """Release the hold (and for a disabled host, without ``--copy``, accept its last
    named pull); print what was released or accepted (or that there was nothing: exit 0
    all the same, so that a script may release twice), and write the metrics and the
    status page again (they said "held" until the next pull: an alert kept firing).
    Returns 1 when those could not be written. Raises UsageError for an unknown host, or
    ``--copy`` without a ``copy:`` section."""
    from .outputs import publish, record_problems

    host = config.host(args.hostname)
    scope = "copy" if getattr(args, "copy", False) else ""
    if scope and config.backend.copy is None:
        raise UsageError(f"{config.path} has no copy: section: {host.name} has no copy")
    lock = config.instance_lock("pullback-server release")
    with lock.acquire(wait=config.maintenance.wait_for_pull):  # pulls rewrite status.json
        hold = status_file.release_hold(config.state_dir, host.name, scope)
        accepted = _accept_pulls(config, host) if not scope and not host.enabled else []
    name = f"{host.name}'s copy" if scope else host.name
    if hold is not None:
        print(
            f"{name}: released the hold of {hold.get('since')} ({hold.get('reason')}); "
            "the next maintain forgets by the retention policy again"
        )
    for words in accepted:
        print(f"{host.name}: {words}; disabled in server.yaml, it counts no more")
    if hold is None and not accepted:
        print(_nothing(config, host, name, scope))
        return EXIT_OK
    _, unwritten = publish(config)
    record_problems(config, unwritten)
    return EXIT_FAILED if unwritten else EXIT_OK


def _accept_pulls(config: ServerConfig, host: HostConfig) -> list[str]:
    """Accept the disabled ``host``'s last pull that a run named: the failed one
    status.json records, the one the pull journal names as cut short; what each was."""
    accepted = []
    pull = status_file.accept_pull(config.state_dir, host.name)
    if pull is not None:
        why = f": {printable(str(pull['reason']), 300)}" if pull.get("reason") else ""
        accepted.append(
            f"accepted the {printable(str(pull.get('last_result')), 40)} pull of "
            f"{printable(str(pull.get('last_attempt')), 40)}{why}"
        )
    cut = journal.accept_cut(config.state_dir, host.name)
    if cut is not None:
        accepted.append(f"accepted that {cut.describe(host.name)}")
    return accepted


def _nothing(config: ServerConfig, host: HostConfig, name: str, scope: str) -> str:
    """What ``release`` says when it had nothing to do."""
    if scope or not host.enabled:
        more = "" if scope else " and no pull of it that a run named counts"
        return f"{name}: forget is not held{more}; nothing to release"
    try:
        entry = status_file.recorded_hosts(config.state_dir).get(host.name, {})
    except OSError:
        entry = {}
    if entry.get("last_result") == Status.FAILED:
        return (
            f"{name}: forget is not held; nothing to release (its failed last pull counts "
            "until a pull of it passes: release accepts only a pull of a host disabled "
            "in server.yaml, enabled: false)"
        )
    return f"{name}: forget is not held; nothing to release"
