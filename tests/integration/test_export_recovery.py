"""``pullback-server export-recovery`` with the real ``age``, ``ssh-keygen`` and ``tar``:
the bundle says where everything is and carries no secret in the clear; with
``--with-secrets`` the password and location files, and what reaches the stores (the ssh
configuration, keys and pinned host keys of an sftp or ssh store, the units' drop-ins and
the credential files they name), come back, byte for byte and with their modes, only with
the administrator's age identity. The ssh and systemd configuration it reads is in
temporary directories (``SystemPaths``), never this machine's /etc."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from pullback.server import cli as server_cli
from pullback.server import export_recovery
from pullback.server.store_access import MAX_FILE, SystemPaths
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
AWS_SECRET = "aws-Secret-8841"
RSH_SECRET = "rsh-Secret-3307"


@pytest.fixture
def system(tmp_path, monkeypatch) -> SystemPaths:
    """An empty ssh and systemd configuration the command reads instead of /etc's."""
    paths = SystemPaths(tmp_path / "ssh_config.d", tmp_path / "systemd")
    paths.ssh_config_dir.mkdir()
    paths.systemd_dir.mkdir()
    monkeypatch.setattr(export_recovery, "SystemPaths", lambda: paths)
    return paths


@pytest.fixture
def server(system, capsys):
    """``pullback-server --config CONFIG ARGS…`` in this process (so that it reads
    ``system``), as a CompletedProcess."""

    def run(config: Path, *args: str) -> subprocess.CompletedProcess:
        code = server_cli.main(["--config", str(config), *args])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    return run


def admin(tmp_path: Path) -> tuple[Path, Path]:
    """An age identity and its recipient file."""
    identity = tmp_path / "admin.key"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = tmp_path / "admin.pub"
    recipient.write_text(
        subprocess.run(
            ["age-keygen", "-y", str(identity)], check=True, capture_output=True, text=True
        ).stdout
    )
    return identity, recipient


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


def test_the_bundle_says_where_everything_is_and_holds_no_secret_in_the_clear(
    tmp_path, config, server
):
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
    readme = found["pullback-recovery/README.txt"].decode()
    assert "No secrets are in this bundle" in readme
    assert f"{config.parent}/repository.pass (backend.password_file)" in readme


def test_the_secrets_come_back_only_with_the_administrators_identity(tmp_path, config, server):
    identity, recipient = admin(tmp_path)
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


ENV_SECRET = "env-Secret-3307"


@pytest.fixture
def sftp_store(tmp_path, config, system) -> dict[str, tuple[Path, int]]:
    """The copy in an sftp store as docs/scaling.md sets it up: an ssh_config drop-in
    naming the store's key and pinned host key; the units' drop-ins giving restic S3
    credentials by file and in the environment. The files, with the modes they must
    come back with."""
    etc = config.parent
    text = config.read_text().replace(
        "repository_root: /mnt/offsite",
        "repository_url: 'sftp:pullback-store:/srv/sftp-store/{host}'",
    )
    config.write_text(text)
    (etc / "keys").mkdir()
    key = etc / "keys" / "store_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    known = etc / "store_known_hosts"
    known.write_text("store.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinned\n")
    known.chmod(0o644)
    drop_in = system.ssh_config_dir / "pullback-store.conf"
    drop_in.write_text(
        "Host pullback-store\n    HostName store.example\n    User backup\n"
        f"    IdentityFile {key}\n    IdentitiesOnly yes\n"
        f"    UserKnownHostsFile {known}\n    StrictHostKeyChecking yes\n"
    )
    drop_in.chmod(0o644)
    (system.ssh_config_dir / "other.conf").write_text("Host other\n    IdentityFile /nowhere\n")
    credentials = secret(
        etc / "aws-credentials", f"[default]\naws_secret_access_key = {AWS_SECRET}"
    )
    unit = system.systemd_dir / "pullback-server.service.d"
    unit.mkdir()
    s3 = unit / "s3.conf"
    s3.write_text(
        f"[Service]\nEnvironment=AWS_SHARED_CREDENTIALS_FILE={credentials}\n"
        "ReadWritePaths=/mnt/offsite\n"
    )
    s3.chmod(0o644)
    env = secret(unit / "env.conf", f"[Service]\nEnvironment=AWS_SECRET_ACCESS_KEY={ENV_SECRET}")
    return {
        "key": (key, 0o600),
        "known hosts": (known, 0o644),
        "ssh drop-in": (drop_in, 0o644),
        "credentials": (credentials, 0o600),
        "unit drop-in": (s3, 0o644),
        "secret unit drop-in": (env, 0o600),
    }


def unpacked(tmp_path: Path, identity: Path, sealed: bytes) -> Path:
    """secrets.tar.age unpacked as docs/disaster-recovery.md does, below a directory
    standing in for /: ``age --decrypt -i admin.key … | tar -xpf - -C /``."""
    root = tmp_path / "new-server"
    root.mkdir()
    plain = subprocess.run(
        ["age", "--decrypt", "-i", str(identity)], input=sealed, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-xpf", "-", "-C", str(root)], input=plain, check=True)
    return root


def in_the_clear(found: dict[str, bytes]) -> bytes:
    return b"".join(data for name, data in found.items() if not name.endswith(".age"))


def test_what_reaches_the_stores_comes_back_with_its_modes(tmp_path, config, sftp_store, server):
    identity, recipient = admin(tmp_path)
    out = tmp_path / "bundle.tar"
    args = (
        "export-recovery",
        "--output",
        str(out),
        "--with-secrets",
        "--recipient",
        str(recipient),
    )
    result = server(config, *args)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower() and "not in it" not in result.stdout, result
    found = members(out)
    clear = in_the_clear(found)
    key_text = sftp_store["key"][0].read_bytes()
    for word in (AWS_SECRET.encode(), ENV_SECRET.encode(), key_text, b"PRIVATE KEY"):
        assert word not in clear
    readme = found["pullback-recovery/README.txt"].decode()
    for path, _ in sftp_store.values():
        assert str(path) in readme, readme
    assert "/nowhere" not in readme, "a drop-in no store's host matches stays"
    root = unpacked(tmp_path, identity, found["pullback-recovery/secrets.tar.age"])
    for what, (path, mode) in sftp_store.items():
        back = root / str(path).lstrip("/")
        assert back.read_bytes() == path.read_bytes(), what
        assert back.stat().st_mode & 0o7777 == mode, what
    assert not (root / str(config.parent / "id").lstrip("/")).exists()


def test_a_missing_or_oversized_store_file_is_said_and_left_out(
    tmp_path, config, sftp_store, server
):
    identity, recipient = admin(tmp_path)
    key, _ = sftp_store["key"]
    with key.open("r+b") as stream:
        stream.truncate(MAX_FILE + 1)
    known, _ = sftp_store["known hosts"]
    known.unlink()
    out = tmp_path / "bundle.tar"
    args = (
        "export-recovery",
        "--output",
        str(out),
        "--with-secrets",
        "--recipient",
        str(recipient),
    )
    result = server(config, *args)
    assert result.returncode == 0, result.stderr
    assert f"{key} (" in result.stderr and "over the bound of 1048576" in result.stderr
    assert f"{known} (" in result.stderr and ": missing" in result.stderr
    assert "2 thing(s) a new server needs are not in it" in result.stdout
    found = members(out)
    readme = found["pullback-recovery/README.txt"].decode()
    left_out = readme.split("Not in this bundle, bring it yourself:")[1]
    assert str(key) in left_out and str(known) in left_out
    root = unpacked(tmp_path, identity, found["pullback-recovery/secrets.tar.age"])
    assert not (root / str(key).lstrip("/")).exists()
    assert (root / str(sftp_store["ssh drop-in"][0]).lstrip("/")).is_file()

    # a password file server.yaml names is not left out: the export stops
    password = config.parent / "copy.pass"
    with password.open("r+b") as stream:
        stream.truncate(MAX_FILE + 1)
    out.unlink()
    stopped = server(config, *args)
    assert stopped.returncode == 1 and f"{password} (copy.password_file)" in stopped.stderr
    assert "over the bound" in stopped.stderr and not out.exists()


def test_without_secrets_the_readme_names_what_to_bring(tmp_path, config, sftp_store, server):
    out = tmp_path / "bundle.tar"
    result = server(config, "export-recovery", "--output", str(out))
    assert result.returncode == 0, result.stderr
    found = members(out)
    assert "pullback-recovery/secrets.tar.age" not in found
    clear = in_the_clear(found)
    for word in (AWS_SECRET.encode(), ENV_SECRET.encode(), b"PRIVATE KEY"):
        assert word not in clear
    readme = found["pullback-recovery/README.txt"].decode()
    assert "No secrets are in this bundle" in readme
    for path, _ in sftp_store.values():
        assert f"  {path} (" in readme, readme
    assert (
        "sftp:pullback-store:/srv/sftp-store/web1"
        in found["pullback-recovery/locations.txt"].decode()
    )
