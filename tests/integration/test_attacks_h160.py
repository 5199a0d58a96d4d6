"""helper-160's attacks on today's commits (symlink xattrs in staging, borg --numeric-ids,
the runner's pidfd wait, sqlite_copy's data bytes)."""

from __future__ import annotations

import pytest

from pullback.common.archive import tarformat
from tests.helpers.archives import Entry, build_tar, publish

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_an_attribute_name_with_a_nul_byte_is_refused_in_plain_words(fleet, kind):
    """A hostile client's PAX key ``SCHILY.xattr.trusted.a<NUL>b`` (on a symlink, as
    today's commit applies them, or on a file) must be refused as a hostile archive or
    dropped with a warning: not a Python ValueError ('embedded null byte') escaping the
    unpacker, which leaves the whole downloaded archive as a resume point and fails the
    host with a bug's traceback on every pull."""
    fleet.add_host("web1")
    extra = {"linkname": "t"} if kind == "symlink" else {"data": b"x"}
    member_kind = tarformat.SYMTYPE if kind == "symlink" else tarformat.REGTYPE
    entries = [
        Entry("services/app/files/t", data=b"t\n"),
        Entry(
            "services/app/files/l",
            member_kind,
            pax=[(b"SCHILY.xattr.trusted.a\x00b", b"v")],
            **extra,
        ),
    ]
    publish(fleet.hosts["web1"].client.archives, "web1", build_tar(entries))
    pulled = fleet.server("pull", timeout=120)
    text = pulled.stdout + pulled.stderr
    assert "embedded null byte" not in text and "Traceback" not in text, text
    assert "internal error" not in text and "ValueError" not in text, text


def test_borg_diff_of_an_old_and_a_new_archive_says_nothing_of_unchanged_files(tmp_path):
    """An archive an older pullback made (owner names stored) against one made with
    --numeric-ids (none): borg 1.2 parses diff's --numeric-ids and never passes it on
    (archiver.do_diff), so every named file says an owner change (diff_args no longer
    claims otherwise); what the ransomware guard counts from it stays nothing changed,
    nothing removed."""
    import os
    import shutil
    import subprocess

    from pullback.server.backends import borg as borg_module

    if shutil.which("borg") is None:  # pragma: no cover
        pytest.skip("no borg")
    src = tmp_path / "src"
    src.mkdir()
    (src / "daemonfile").write_text("a\n")
    os.chown(src / "daemonfile", 1, 1)
    (src / "rootfile").write_text("b\n")
    env = {
        **os.environ,
        "BORG_REPO": str(tmp_path / "repo"),
        "BORG_PASSPHRASE": "",
        "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
        "BORG_BASE_DIR": str(tmp_path / "base"),
    }

    def borg(*args):
        return subprocess.run(
            ["borg", *args], cwd=src, env=env, capture_output=True, text=True, check=True
        )

    borg("init", "-e", "none")
    borg("create", "--files-cache=ctime,size", "::old", ".")  # what the old create_args did
    borg("create", "--files-cache=ctime,size", "--numeric-ids", "::new", ".")
    out = borg(*borg_module.diff_args("old", "new")).stdout
    assert "--numeric-ids" not in borg_module.diff_args("old", "new")
    assert borg_module.count_diff(out.splitlines()) == (0, 0, 0), out
