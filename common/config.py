"""Load a YAML configuration file and validate it against its JSON Schema."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from . import schema as schemas
from .errors import ConfigError
from .schema import find_secret_files, find_secrets
from .secrets import SecretFileError, read_secret_file
from .yamlfile import KeyPath, Problem, YamlDocument, YamlFileError, format_key, load


def load_validated(path: str | os.PathLike, schema: dict, *, allow_empty: bool) -> YamlDocument:
    """Read ``path``, validate it against ``schema`` and fill in the defaults.

    An empty file is an empty mapping when ``allow_empty``. Returns the document (its
    ``data`` with defaults applied). Raises :class:`ConfigError` listing every problem.
    """
    try:
        doc = load(path, obeyed=True)
    except YamlFileError as exc:
        raise ConfigError(exc.problems) from None
    if doc.data is None:
        if not allow_empty:
            raise ConfigError([Problem(str(path), 1, "", "the file is empty")])
        doc.data = {}
    if not isinstance(doc.data, dict):
        raise ConfigError([doc.problem((), "expected a mapping of keys at the top level")])
    problems = schemas.validate(doc, schema)
    exposed = world_readable_secret(doc, schema) if not problems else None
    if exposed:  # (a healthchecks URL in a client.yaml of mode 0644: an outside review)
        problems.append(exposed)
    if problems:
        raise ConfigError(problems)
    doc.data = schemas.apply_defaults(schema, doc.data)
    return doc


def secret_file_problems(path: Path, schema: dict, data, prefix: KeyPath = ()) -> list[str]:
    """One ``file: key: problem`` line for every secret file ``data`` names (the schema's
    ``x-secret-file`` properties) that is missing, empty or readable by others. It
    registers no secret: what reads a file to use it registers what it holds (a location
    file's line is not a secret, only its URL's password)."""
    problems = []
    for keys, value in find_secret_files(schema, data):
        try:
            read_secret_file(value, str(keys[-1]).replace("_", " "), register_line=False)
        except SecretFileError as exc:
            key = format_key((*prefix, *keys))
            problems.append(f"{path}: {key}: {exc}")
    return problems


def world_readable_secret(doc: YamlDocument, schema: dict, prefix=()) -> Problem | None:
    """A problem when the file holds an ``x-secret`` value yet anyone may read it."""
    data = doc.sub(prefix).data if prefix else doc.data
    secret = find_secrets(schema, data)
    if not secret:
        return None
    try:
        mode = doc.path.stat().st_mode
    except OSError:
        return None
    if mode & stat.S_IROTH:
        key_path = (*prefix, *secret[0][0])
        return doc.problem(
            key_path,
            f"holds a secret but the file is world-readable (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod o-rwx {Path(doc.path)}",
        )
    return None
