"""``pullback-server export-recovery`` with the real ``age`` and ``ssh-keygen``: the
bundle says where everything is and carries no secret in the clear; with
``--with-secrets`` the password and location files come back, byte for byte, only with
the administrator's age identity."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.helpers.files import secret_file as secret

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("age") is None, reason="age is not installed (apt install age)"
    ),
]

PRIMARY = "primary-Password-7731"
COPY = "copy-Password-1194"
URL_SECRET = "url-Secret-5520"


def server(config: Path, *args: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "pullback.server.cli", "--config", str(config), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.fixture
def config(tmp_path) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(etc / "id")], check=True
    )
    host_key = tmp_path / "hostkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    (etc / "known_hosts").write_text(
        "web1 " + " ".join(Path(f"{host_key}.pub").read_text().split()[:2]) + "\n"
    )
    secret(etc / "repository.pass", PRIMARY)
    secret(etc / "copy.pass", COPY)
    secret(etc / "db1.repo", f"rest:http://puller:{URL_SECRET}@store:8000/db1/")
    path = etc / "server.yaml"
    path.write_text(
        f"backend: {{password_file: {etc}/repository.pass, repository_root: /srv/repos}}\n"
        f"ssh: {{key_file: {etc}/id, known_hosts: {etc}/known_hosts}}\n"
        f"copy: {{repository_root: /mnt/offsite, password_file: {etc}/copy.pass}}\n"
        f"state_dir: {tmp_path}/state\nlock_dir: {tmp_path}/run\n"
        f"hosts:\n  - name: web1\n  - {{name: db1, repository_file: {etc}/db1.repo}}\n"
    )
    return path


def members(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_the_bundle_says_where_everything_is_and_holds_no_secret_in_the_clear(tmp_path, config):
    out = tmp_path / "bundle.tar"
    result = server(config, "export-recovery", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    found = members(out)
    names = {n.removeprefix("pullback-recovery/") for n in found}
    assert names == {
        "server.yaml",
        "known_hosts",
        "server-key.pub",
        "fingerprints.txt",
        "locations.txt",
        "README.txt",
    }
    text = b"".join(found.values()).decode()
    for word in (PRIMARY, COPY, URL_SECRET):
        assert word not in text and word not in result.stdout + result.stderr
    where = found["pullback-recovery/locations.txt"].decode()
    assert "/srv/repos/web1" in where and "/mnt/offsite/db1" in where
    assert "rest:http://puller:***@store:8000/db1/" in where
    assert "SHA256:" in found["pullback-recovery/fingerprints.txt"].decode()
    assert "No secrets are in this bundle" in found["pullback-recovery/README.txt"].decode()


def test_the_secrets_come_back_only_with_the_administrators_identity(tmp_path, config):
    identity = tmp_path / "admin.key"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = tmp_path / "admin.pub"
    recipient.write_text(
        subprocess.run(
            ["age-keygen", "-y", str(identity)], check=True, capture_output=True, text=True
        ).stdout
    )
    out = tmp_path / "bundle.tar"
    refused = server(config, "export-recovery", "--output", str(out), "--with-secrets")
    assert refused.returncode == 2 and "--recipient" in refused.stderr
    result = server(
        config,
        "export-recovery",
        "--output",
        str(out),
        "--with-secrets",
        "--recipient",
        str(recipient),
    )
    assert result.returncode == 0, result.stderr
    found = members(out)
    sealed = found["pullback-recovery/secrets.tar.age"]
    for word in (PRIMARY, COPY, URL_SECRET):
        assert word.encode() not in b"".join(found.values())
    plain = subprocess.run(
        ["age", "--decrypt", "-i", str(identity)], input=sealed, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        inside = {"/" + m.name: (tar.extractfile(m).read(), m.mode) for m in tar.getmembers()}
    etc = config.parent
    assert inside[f"{etc}/repository.pass"] == (f"{PRIMARY}\n".encode(), 0o600)
    assert inside[f"{etc}/copy.pass"][0] == f"{COPY}\n".encode()
    assert URL_SECRET.encode() in inside[f"{etc}/db1.repo"][0]
    assert f"{etc}/id" not in inside, "the server's own private key never leaves"
    # another identity cannot open it
    other = tmp_path / "other.key"
    subprocess.run(["age-keygen", "-o", str(other)], check=True, capture_output=True)
    assert (
        subprocess.run(
            ["age", "--decrypt", "-i", str(other)], input=sealed, capture_output=True
        ).returncode
        != 0
    )
