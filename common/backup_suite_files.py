"""``import-backup-suite``: read backup-suite's files, convert them
(:mod:`.backup_suite`), check the result against pullback's schema, print or write it.

Bounds: each old file is read up to :data:`MAX_FILE` bytes; every value is type-checked
before use (a YAML alias bomb is refused at its first list, never expanded).
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from .backup_suite import BadValue, Conversion, read_common_config, tracked, unasked
from .errors import EXIT_OK, ConfigError, UsageError
from .fsutil import atomic_write
from .yamlfile import YamlDocument, YamlFileError, format_key, load

HEADER = "# made by import-backup-suite from "
"""The first line of every file the import writes."""

MAX_FILE = 1 << 20
"""Bytes read of each old file (backup-suite's are a few KiB)."""


@dataclass(frozen=True)
class ImportSpec:
    """One side's import: the old file's name, the converter, pullback's schema."""

    old_name: str
    convert: Callable[[dict, dict[str, str]], Conversion]
    load: Callable[[Path], object]
    """pullback's own loader of the new file (schema and every other rule); raises
    ConfigError."""


def read_text(path: Path) -> str:
    """A small UTF-8 text file. Raises UsageError (unreadable, not a regular file, too
    big, not UTF-8)."""
    if path.exists() and not path.is_file():
        raise UsageError(f"{path} is not a regular file")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_FILE:
        raise UsageError(f"{path} is larger than {MAX_FILE >> 20} MiB; not a backup-suite file")
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text (byte {exc.start}); convert it first") from None


def read_old(source: Path, spec: ImportSpec) -> tuple[YamlDocument, dict[str, str]]:
    """The old YAML file (its keys and their lines; ``data`` {} for an empty file) and
    common_config's assignments. Raises UsageError: a YAML error as ``file:line: message``
    on one line, as pullback's own files say it."""
    old = source / spec.old_name
    read_text(old)  # a regular file, small, UTF-8
    try:
        doc = load(old)
    except YamlFileError as exc:
        raise UsageError("\n".join(str(p) for p in exc.problems)) from None
    except RecursionError:
        raise UsageError(f"{old} is nested too deeply; not a backup-suite file") from None
    if doc.data is None:
        doc.data = {}
    if not isinstance(doc.data, dict):
        raise UsageError(f"{old}: expected a mapping of keys")
    common_file = source / "common_config"
    common = read_common_config(read_text(common_file)) if common_file.exists() else {}
    return doc, common


def checked_text(conv: Conversion, spec: ImportSpec, old: Path) -> str:
    """The new file's text, after loading it as pullback would. Raises UsageError naming
    the keys pullback would refuse."""
    text = f"{HEADER}{old}\n" + yaml.safe_dump(conv.settings, sort_keys=False, allow_unicode=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as handle:
        handle.write(text)
        handle.flush()
        try:
            spec.load(Path(handle.name))
        except ConfigError as exc:
            said = [str(p).replace(handle.name, "(converted)") for p in exc.problems]
            raise ConfigError(
                [f"{old} converts to a configuration pullback refuses:", *said]
            ) from None
    return text


def run_import(source: Path, target: Path, write: bool, spec: ImportSpec) -> int:
    """``import-backup-suite``: read ``source/<old_name>`` (and ``source/common_config``),
    print what became of each key on standard error, and the new settings on standard
    output, or with ``write`` into ``target`` (the file there is kept beside it as
    ``<name>.before-import``, never overwritten). Returns the exit code; raises
    UsageError (exit 2) when an old file cannot be read or converted, naming the key."""
    old = source / spec.old_name
    doc, common = read_old(source, spec)
    asked: set[tuple] = set()
    try:
        conv = spec.convert(tracked(doc.data, asked), common)
    except BadValue as exc:
        raise UsageError(f"{old}: {exc}") from None
    except RecursionError:
        raise UsageError(f"{old} is nested too deeply; not a backup-suite file") from None
    for path, number, why in unasked(doc.lines, asked):
        conv.drop(f"{old}:{number}: {format_key(path)}", why)
    for line in conv.mapped:
        print(f"mapped: {line}", file=sys.stderr)
    for line in conv.unmapped:
        print(f"no equivalent: {line}", file=sys.stderr)
    text = checked_text(conv, spec, old)
    if not write:
        print(text, end="")
        for name in conv.secret_files:
            print(f"not written: {name} (it holds a secret; --write writes it)", file=sys.stderr)
        return EXIT_OK
    if not target.parent.is_dir():
        raise UsageError(f"cannot write {target}: its directory {target.parent} does not exist")
    for name in conv.secret_files:  # all refused before any is written
        _writable_secret(Path(name))
    for name, secret in conv.secret_files.items():
        _write_secret(Path(name), secret)
    try:
        written = write_keeping(target, text)
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror}") from None
    if written:
        print(f"wrote {target}; now run the check command", file=sys.stderr)
    return EXIT_OK


def _writable_secret(path: Path) -> None:
    """Refuse (UsageError) a secret file ``path`` that ``--write`` must not write: its
    place or its directory a symbolic link, or its place a directory."""
    for place in (path.parent, path):
        if place.is_symlink():
            raise UsageError(f"{place} is a symbolic link: remove it, then import again")
    if path.is_dir():
        raise UsageError(f"{path} is a directory: move it away, then import again")


def _write_secret(path: Path, text: str) -> None:
    """Write the secret ``text`` to ``path``, mode 0600, in a directory of mode 0700
    (made so, or narrowed to it), keeping a different file there as ``write_keeping``
    does; a file that holds the text already keeps it, narrowed to 0600 and ours.
    Raises UsageError."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if stat.S_IMODE(path.parent.lstat().st_mode) != 0o700:
            path.parent.chmod(0o700)
            print(f"{path.parent} is mode 0700 now (it holds secrets)", file=sys.stderr)
        if write_keeping(path, text, mode=0o600):
            print(f"wrote {path} (mode 0600)", file=sys.stderr)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_keeping(target: Path, text: str, mode: int | None = None) -> bool:
    """Write ``target``, keeping the file there as ``<name>.before-import`` (or ``.1``,
    ``.2`` ... when that exists) with its owner and mode; the new file gets the old one's
    mode (0640 for a new file) unless ``mode`` is given. A file that holds ``text``
    already is left as it is (no copy of it is kept), only given ``mode`` and our owner
    when ``mode`` is given. Returns whether it wrote; raises UsageError for a target that
    is a directory or a symbolic link, OSError when it cannot write."""
    if target.is_symlink() or target.is_dir():
        raise UsageError(f"{target} is a directory or a symbolic link; name the file itself")
    before = target.stat() if target.exists() else None
    if before is not None and target.read_bytes() == text.encode():
        if mode is not None:  # (by a descriptor: a symlink put there now is not followed)
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                os.fchown(fd, os.geteuid(), os.getegid())
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
        shown = f" (mode {stat.S_IMODE(target.stat().st_mode):04o})" if mode is not None else ""
        print(f"{target} holds that already{shown}; not written", file=sys.stderr)
        return False
    if before is not None:
        kept = target.with_name(target.name + ".before-import")
        number = 0
        while kept.exists():
            number += 1
            kept = target.with_name(f"{target.name}.before-import.{number}")
        was = target.read_bytes()
        atomic_write(kept, was, mode=stat.S_IMODE(before.st_mode))
        os.chown(kept, before.st_uid, before.st_gid, follow_symlinks=False)
        if was.startswith(HEADER.encode()):
            print(
                f"warning: {target} was made by import-backup-suite and was changed since "
                f"(or its source was): kept as {kept}; copy your changes from there",
                file=sys.stderr,
            )
        else:
            print(f"kept the old {target} as {kept}", file=sys.stderr)
    if mode is None:
        mode = stat.S_IMODE(before.st_mode) if before else 0o640
    atomic_write(target, text, mode=mode)
    if before is not None:  # client.yaml is read by the serve endpoint's group
        os.chown(target, before.st_uid, before.st_gid, follow_symlinks=False)
    return True
