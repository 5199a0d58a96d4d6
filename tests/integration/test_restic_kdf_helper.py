"""The tests' ``restic`` (tests/helpers/bin/restic, put first on PATH by conftest.py)
gives each new repository a cheap key derivation and changes nothing else: the right
password opens it, a wrong one does not, and what was stored restores byte for byte.
Real restic throughout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.skipif(shutil.which("restic") is None, reason="restic not installed")


def _restic(repo, password_file, *args, check=True):
    env = {**os.environ, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD_FILE": str(password_file)}
    env["RESTIC_CACHE_DIR"] = str(repo.parent / "cache")
    return subprocess.run(["restic", *args], env=env, capture_output=True, text=True, check=check)


def test_a_repository_made_by_init_opens_cheaply_with_its_password_only(tmp_path):
    assert shutil.which("restic").endswith("tests/helpers/bin/restic")  # conftest.py
    repo, password, data = tmp_path / "repo", tmp_path / "pass", tmp_path / "data"
    password.write_text("correct horse\n")
    password.chmod(0o600)
    data.mkdir()
    (data / "file").write_bytes(os.urandom(100_000))
    _restic(repo, password, "init")
    (key,) = (repo / "keys").iterdir()
    assert json.loads(key.read_bytes())["N"] == 1024  # calibrated, restic gives 2**15 or more
    _restic(repo, password, "backup", str(data))
    _restic(repo, password, "restore", "latest", "--target", str(tmp_path / "out"))
    restored = tmp_path / "out" / str(data).lstrip("/") / "file"
    assert restored.read_bytes() == (data / "file").read_bytes()
    assert _restic(repo, password, "check", "--read-data").returncode == 0

    wrong = tmp_path / "wrong"
    wrong.write_text("incorrect horse\n")
    wrong.chmod(0o600)
    refused = _restic(repo, wrong, "snapshots", check=False)
    assert refused.returncode != 0
    assert "wrong password" in refused.stderr


def test_a_repository_made_before_is_never_rekeyed(tmp_path):
    """An outside review: ``restic backup init`` (a path named init) re-keyed a
    repository restic had made with its own parameters. Only one the call made is."""
    repo, password = tmp_path / "repo", tmp_path / "pass"
    password.write_text("pw\n")
    password.chmod(0o600)
    real = os.environ.get("PULLBACK_TEST_REAL_RESTIC", "/usr/bin/restic")
    env = {**os.environ, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD_FILE": str(password)}
    subprocess.run([real, "init"], env=env, capture_output=True, check=True)
    (key,) = (repo / "keys").iterdir()
    before = key.read_bytes()
    (tmp_path / "init").write_text("a file named init")
    _restic(repo, password, "backup", str(tmp_path / "init"))
    (key_after,) = (repo / "keys").iterdir()
    assert key_after.read_bytes() == before
