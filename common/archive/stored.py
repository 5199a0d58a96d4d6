"""What a stored snapshot holds at its top: ``services/`` and, beside it, the files that
prove it and say what it was. The server's unpacker keeps them in staging although no
member names them, borg stores them by name, and a restore of one service or path
fetches them with it."""

from __future__ import annotations

from .manifest import MANIFEST_NAME
from .sidecar import SIDECAR_NAME
from .tree_list import TREE_NAME

BESIDE_SERVICES = (MANIFEST_NAME, SIDECAR_NAME, TREE_NAME)
"""The manifest (every regular file's sha256), the sidecar (what the client reported) and
the list of the other entries. A snapshot stored before one of them was written lacks it
(borg warns of a name it does not find)."""
