"""Repositories on restic's sftp and S3 backends and on borg over ``ssh://``, each on a real
server on loopback (docs/scaling.md): an sshd whose key is locked to ``sftp-server`` or
``borg serve --restrict-to-path``, and moto's S3 server checking every request's
signature. The cycle pull, status and metrics, maintain with its check and drill, restore
runs against each; the repository is seen in the store by the tool itself; credentials
reach the tool from the environment or from files and are never printed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.files import secret_file
from tests.helpers.fleet import PASSWORD, Fleet
from tests.helpers.s3_store import MotoS3, moto_missing
from tests.helpers.ssh_store import SshStore

pytestmark = pytest.mark.integration

AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "MINIO_ACCESS_KEY",
    "MINIO_SECRET_KEY",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
)
"""What restic's S3 client takes credentials from (none of the machine's may count)."""
SETTINGS = {
    "retention": {"keep_last": 1},
    # the ransomware guard compares snapshots, the same on any store: not run here
    "maintenance": {"guard": {"enabled": False}},
}


class Server:
    """``pullback-server`` of a fleet, with the environment its units would give it;
    keeps everything it printed."""

    def __init__(self, fleet: Fleet, env: dict[str, str]):
        self.fleet = fleet
        self.env = env
        self.outputs: list[str] = []

    def __call__(self, *args: str, rc: int = 0) -> subprocess.CompletedProcess:
        result = self.fleet.server(*args, env=self.env)
        self.outputs.extend((result.stdout, result.stderr))
        assert result.returncode == rc, result.stdout + result.stderr
        return result

    def written(self) -> list[str]:
        """Everything pullback printed, every file of its state directory, the metrics."""
        files = [p for p in self.fleet.state.rglob("*") if p.is_file()]
        files.append(Path(self.fleet.extra["metrics_file"]))
        return [*self.outputs, *(p.read_text(errors="replace") for p in files)]


def shows_no_secret(texts: list[str], *secrets: str) -> None:
    for text in texts:
        for secret in (PASSWORD, *secrets):
            assert secret not in text, f"a credential was printed: {text[:2000]}"


def the_cycle(
    tmp_path: Path, server: Server, tool_snapshots: Callable[[], int], days: int = 2
) -> None:
    """``days`` pulls of ``web1``, status and metrics, ``maintain --verify`` (forget to
    one snapshot, prune, check, drill), ``restore``; the snapshots counted in the remote
    repository by ``tool_snapshots`` (restic or borg itself, not pullback). One day
    leaves forget nothing to delete (a minute less of CI for two stores)."""
    fleet = server.fleet
    web = fleet.hosts["web1"]
    for day in range(days):
        made = time.monotonic()
        web.make_archive({"site/index.html": f"<h1>day {day}</h1>".encode()})
        result = server("pull")
        time.sleep(max(0.0, made + 1.1 - time.monotonic()))  # archive stamps: seconds
    # the tool's command lines are logged; locations and credentials are not in them
    assert f"running: {fleet.backend} " in result.stderr, result.stderr
    assert tool_snapshots() == days

    status = json.loads(server("status", "--json").stdout)["hosts"]["web1"]
    assert status["last_result"] == "stored", status
    assert status["repository_bytes"] > 0, status
    metrics = Path(fleet.extra["metrics_file"]).read_text()
    size = re.search(r'^pullback_repository_bytes\{host="web1"\} (\S+)$', metrics, re.M)
    assert size and float(size[1]) > 0, metrics

    result = server("--verbose", "maintain", "--verify")
    assert f"forget: kept 1 snapshot(s), forgot {days - 1}" in result.stderr, result.stderr
    assert "match the manifest" in result.stderr, result.stderr
    assert tool_snapshots() == 1
    status = json.loads(server("status", "--json").stdout)["hosts"]["web1"]
    assert status.get("last_verified"), status

    target = tmp_path / "restored"
    server("restore", "web1", "--target", str(target))
    check = subprocess.run(
        ["sha256sum", "--check", "--strict", "MANIFEST.sha256"], cwd=target, capture_output=True
    )
    assert check.returncode == 0, check.stdout
    (index,) = target.rglob("index.html")
    assert index.read_bytes() == f"<h1>day {days - 1}</h1>".encode()


@pytest.fixture
def fleet(tmp_path):
    fleet = Fleet(tmp_path / "fleet")
    fleet.add_host("web1")
    yield fleet
    fleet.stop()


@pytest.fixture
def no_aws(monkeypatch):
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def restic(url: str, fleet: Fleet, env: dict[str, str], *args: str) -> bytes:
    """``restic ARGS`` on the repository at ``url``, without pullback (and its cache)."""
    return subprocess.run(
        ["restic", *args, "--no-cache"],
        env={
            **os.environ,
            **env,
            "RESTIC_REPOSITORY": url,
            "RESTIC_PASSWORD_FILE": str(fleet.password_file),
        },
        capture_output=True,
        check=True,
    ).stdout


def restic_count(url: str, fleet: Fleet, env: dict[str, str]) -> int:
    """How many snapshots restic itself lists at ``url``."""
    return len(json.loads(restic(url, fleet, env, "snapshots", "--json")))


def test_restic_on_sftp_through_the_ssh_client_configuration(tmp_path, fleet):
    """restic runs ``ssh STORE -s sftp`` itself: address, port, user, key and the pinned
    host key come from the ssh client configuration (``/etc/ssh/ssh_config.d`` on a
    server, ``ssh -F`` here); every host placed by ``backend.repository_url``."""
    store = SshStore(tmp_path / "sftp", "sftp").start()
    try:
        fleet.write_config(
            **SETTINGS,
            metrics_file=str(tmp_path / "metrics.prom"),
            backend={"repository_url": store.restic_url("{host}")},
        )
        server = Server(fleet, store.env())
        url = store.restic_url("web1")
        the_cycle(tmp_path, server, lambda: restic_count(url, fleet, store.env()), days=1)
        # the repository is the store's directory, written by sftp-server
        assert (store.directory / "web1" / "config").is_file()

        # a store whose host key is not pinned is not reached, and that is said
        pinned = store.known_hosts.read_text()
        store.known_hosts.write_text("")
        result = server("snapshots", "web1", rc=1)
        (failure,) = [line for line in result.stderr.splitlines() if "restic failed on" in line]
        assert url in failure, result.stderr
        # ssh's own words in the failure itself (an outside walk saw only restic's "error:
        # EOF"), or restic's alone when it closed the session before ssh's message reached
        # it (a race inside restic: seen once in a loaded CI run)
        said = ("(over ssh: Host key verification failed.)", "unable to start the sftp session")
        assert any(words in failure for words in said), result.stderr
        store.known_hosts.write_text(pinned)
        shows_no_secret(server.written())
    finally:
        store.stop()


def test_borg_over_ssh_with_borg_rsh(tmp_path):
    """``ssh://user@host:port/path`` per host; the store's key and pinned host key are
    given by ``BORG_RSH`` in the server's environment (pullback leaves it alone); the
    store's key runs only ``borg serve --restrict-to-path``; the first pull makes the
    repository."""
    fleet = Fleet(tmp_path / "fleet", backend="borg")
    store = SshStore(tmp_path / "borg", "borg").start()
    try:
        fleet.add_host("web1")
        url = store.borg_url("web1")
        fleet.host_extra["web1"] = {"repository": url}
        fleet.write_config(**SETTINGS, metrics_file=str(tmp_path / "metrics.prom"))
        server = Server(fleet, store.env())

        def borg(location: str, *args: str) -> subprocess.CompletedProcess:
            env = {
                **os.environ,
                **store.env(),
                "BORG_REPO": location,
                "BORG_PASSPHRASE": PASSWORD,
                "BORG_BASE_DIR": str(tmp_path / "borg-own-base"),
            }
            return subprocess.run(["borg", *args], env=env, capture_output=True, text=True)

        def borg_count() -> int:
            listed = borg(url, "list", "--json")
            assert listed.returncode == 0, listed.stderr
            return len(json.loads(listed.stdout)["archives"])

        the_cycle(tmp_path, server, borg_count, days=1)
        assert (store.directory / "web1" / "config").is_file()
        shows_no_secret(server.written())

        # the store's key reaches no repository outside the store's directory
        outside = tmp_path / "outside"
        refused = borg(url.replace(str(store.directory), str(outside)), "init", "-e", "none")
        assert refused.returncode != 0 and not outside.exists(), refused.stderr
    finally:
        store.stop()
        fleet.stop()


def test_restic_on_s3_with_credentials_from_the_environment_or_a_file(tmp_path, fleet, no_aws):
    """moto's S3 server, every signature checked: the cycle with ``AWS_ACCESS_KEY_ID`` and
    ``AWS_SECRET_ACCESS_KEY`` in the server's environment (systemd's EnvironmentFile=),
    then ``AWS_SHARED_CREDENTIALS_FILE`` alone; a wrong secret is refused and said so; the
    secret is never printed or written, nor the password."""
    assert moto_missing() is None, moto_missing()
    store = MotoS3(tmp_path / "s3").start()
    try:
        fleet.write_config(
            **SETTINGS,
            metrics_file=str(tmp_path / "metrics.prom"),
            backend={"repository_url": store.url("{host}")},
        )
        keys = {"AWS_ACCESS_KEY_ID": store.key_id, "AWS_SECRET_ACCESS_KEY": store.secret}
        server = Server(fleet, keys)
        url = store.url("web1")
        the_cycle(tmp_path, server, lambda: restic_count(url, fleet, keys))
        objects = store.objects("web1/")
        assert "web1/config" in objects
        assert len([key for key in objects if key.startswith("web1/snapshots/")]) == 1

        # the credentials in a file (AWS_SHARED_CREDENTIALS_FILE), none in the environment
        credentials = secret_file(
            tmp_path / "aws-credentials",
            f"[default]\naws_access_key_id = {store.key_id}\n"
            f"aws_secret_access_key = {store.secret}\n",
        )
        server.env = {"AWS_SHARED_CREDENTIALS_FILE": str(credentials)}
        listed = server("snapshots", "web1").stdout
        (only,) = json.loads(restic(url, fleet, keys, "snapshots", "--json"))
        assert only["short_id"] in listed, listed

        # a wrong secret: refused by the store, said in words, printed nowhere
        wrong = "wrong" + store.secret[5:]
        server.env = {**keys, "AWS_SECRET_ACCESS_KEY": wrong}
        result = server("snapshots", "web1", rc=1)
        assert f"restic failed on {url}" in result.stderr, result.stderr
        assert "signature" in result.stderr, result.stderr
        shows_no_secret(server.written(), store.secret, wrong)
    finally:
        store.stop()


def test_s3_missing_credentials_are_said_not_taken_for_a_new_repository(tmp_path, fleet, no_aws):
    """An outside walk: without the credentials exported, ``check`` said "will be created
    by the first pull" (an unauthenticated moto answered the unsigned request "The
    specified key does not exist"), the pull then failed on "Access Denied". Here moto
    checks no signature, as there: the absence is not believed without credentials."""
    assert moto_missing() is None, moto_missing()
    import socket
    import sys

    import boto3

    from tests.helpers.sshd import free_port

    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    moto = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto did not listen"
                time.sleep(0.1)
        endpoint = f"http://127.0.0.1:{port}"
        keys = {"aws_access_key_id": "id", "aws_secret_access_key": "secret"}
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys).create_bucket(
            Bucket="pbbucket"
        )
        fleet.write_config(
            **SETTINGS, backend={"repository_url": f"s3:{endpoint}/pbbucket/x{{host}}"}
        )
        server = Server(fleet, {"HOME": str(tmp_path)})  # no ~/.aws/credentials either
        result = server("check", rc=1)
        assert "will be created" not in result.stdout, result.stdout
        assert "restic asked it without credentials: no S3 credentials" in result.stdout
        result = server("pull", rc=1)
        assert "AWS_SHARED_CREDENTIALS_FILE" in result.stdout + result.stderr
        assert not [k for k in moto_keys(endpoint, keys) if k.startswith("xweb1/")], "no init"
        server.env = {
            "HOME": str(tmp_path),
            "AWS_ACCESS_KEY_ID": "id",
            "AWS_SECRET_ACCESS_KEY": "secret",
        }
        result = server("check")
        assert "will be created by the first pull" in result.stdout, result.stdout
    finally:
        moto.terminate()
        moto.wait(timeout=10)


def moto_keys(endpoint: str, keys: dict[str, str]) -> list[str]:
    """The object keys of moto's bucket ``pbbucket``."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys)
    listed = client.list_objects_v2(Bucket="pbbucket").get("Contents", [])
    return [item["Key"] for item in listed]
