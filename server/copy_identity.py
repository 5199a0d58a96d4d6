"""A copy that is its primary repository under another spelling.

server.yaml's check at load compares the locations as written; another host name, port
or endpoint of the same store (scaling.md's append-only one beside the one that may
delete), or a location in a file, passes it. An outside review placed web1's copy at
``rest:http://localhost:PORT/web1/`` beside its primary's ``rest:http://127.0.0.1:PORT/
web1/``: the copy failed as "holds snapshots the primary never had", and ``maintain``
forgot the primary's history by ``copy.retention``. The repositories' own ids tell them
apart (restic's; a borg copy is its primary's mirror, id and all, and says nothing).
"""

from __future__ import annotations

from ..common.errors import Interrupted, PullbackError
from .backends import Backend, Role, make_backend
from .host import HostContext


def primary_of(ctx: HostContext) -> Backend:
    """The host's primary repository, as its pull reaches it (for a copy's context)."""
    config = ctx.config
    return make_backend(
        config.backend,
        ctx.host,
        config.state_dir,
        ctx.runner,
        config.maintenance.repository_lock_wait,
        Role.PULL,
    )


def refuse_the_primary(copy: Backend, primary: Backend) -> None:
    """Raises PullbackError when ``copy`` opens the very repository ``primary`` is (the
    same id): nothing is to be copied into it or forgotten in it. A primary that cannot
    be read is no reason to stop (a copy's maintenance goes on when its primary is lost:
    that is what a copy is for). Raises BackendError when the copy cannot be read."""
    ident = copy.repository_id()
    if ident is None:
        return
    try:
        theirs = primary.repository_id()
    except Interrupted:
        raise
    except PullbackError:
        return
    if ident != theirs:
        return
    raise PullbackError(
        f"the copy {copy.repository()} is the primary repository {primary.repository()} "
        f"itself, reached another way (the same repository id {ident[:8]}): there is no "
        "second copy; nothing is copied to it or forgotten in it. Give the copy a "
        "repository of its own"
    )
