"""``pullback-client restore --from DIR``: DIR's service tree is checked against the
snapshot's manifest before anything is restored (an outside walk: restore.md's rsync
into the same directory twice brought back a file the chosen snapshot did not have)."""

from __future__ import annotations

import hashlib
import logging

import pytest

from pullback.client.restore import check_listed
from pullback.common.archive.manifest import MANIFEST_NAME, format_line
from pullback.common.errors import UsageError


def _snapshot(root, files: dict[str, bytes]) -> None:
    lines = b""
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        lines += format_line(name, hashlib.sha256(data).hexdigest())
    (root / MANIFEST_NAME).write_bytes(lines)


def test_the_snapshots_own_files_pass(tmp_path):
    _snapshot(tmp_path, {"services/app/files/etc/a.conf": b"a", "services/db/dump.sql": b"d"})
    (tmp_path / "services/app/files/etc/link").symlink_to("a.conf")  # not a regular file
    check_listed(tmp_path, tmp_path / "services/app")


def test_a_file_of_an_older_snapshot_is_refused_by_name(tmp_path):
    _snapshot(tmp_path, {"services/app/files/etc/a.conf": b"a"})
    for number in range(5):
        stale = tmp_path / f"services/app/files/etc/old-plugin-{number}.conf"
        stale.write_bytes(b"bad = true\n")
    with pytest.raises(UsageError) as info:
        check_listed(tmp_path, tmp_path / "services/app")
    said = str(info.value)
    assert "is not the snapshot its MANIFEST.sha256 describes: 5 files (" in said
    assert "services/app/files/etc/old-plugin-0.conf, " in said and "and 2 more) not in it" in said
    assert said.endswith("(or rsync with --delete) and restore again; nothing was changed")


def test_a_hostile_name_is_escaped(tmp_path):
    _snapshot(tmp_path, {"services/app/files/a": b"a"})
    (tmp_path / "services/app/files/x\n\x1b[31mforged").write_bytes(b"")
    with pytest.raises(UsageError) as info:
        check_listed(tmp_path, tmp_path / "services/app")
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)


def test_files_fetched_in_part_are_a_warning(tmp_path, caplog):
    _snapshot(tmp_path, {"services/app/files/etc/a": b"a", "services/app/files/srv/b": b"b"})
    (tmp_path / "services/app/files/srv/b").unlink()
    with caplog.at_level(logging.WARNING):
        check_listed(tmp_path, tmp_path / "services/app")
    assert "1 file (services/app/files/srv/b) listed in" in caplog.text


def test_without_a_manifest_nothing_is_checked_and_it_says_so(tmp_path, caplog):
    (tmp_path / "services/app/files").mkdir(parents=True)
    (tmp_path / "services/app/files/extra").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        check_listed(tmp_path, tmp_path / "services/app")
    assert "has no MANIFEST.sha256 beside services/" in caplog.text


def test_a_manifest_that_does_not_parse_is_an_archive_error(tmp_path):
    from pullback.common.errors import ArchiveError

    (tmp_path / "services/app").mkdir(parents=True)
    (tmp_path / MANIFEST_NAME).write_bytes(b"not a manifest line\n")
    with pytest.raises(ArchiveError, match="line 1 is malformed"):
        check_listed(tmp_path, tmp_path / "services/app")
