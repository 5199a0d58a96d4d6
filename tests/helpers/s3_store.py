"""An S3-compatible store on loopback: moto's server (PyPI ``moto[server]``, a test
dependency), with signatures checked.

moto accepts any credential unless told to authenticate; with
``INITIAL_NO_AUTH_ACTION_COUNT`` it lets the first requests through (here: making an IAM
user with an access key, its policy, and the bucket) and from then on checks every
request's SigV4 signature against the user's secret key, as AWS, Ceph RGW, MinIO and
Garage do. restic's S3 client (minio-go) then works against it only with the right
secret: a credential that does not reach restic, or a wrong one, fails.

moto is run as a subprocess of this interpreter and imported nowhere else, so a virtual
environment without it (Debian's packages) still collects the module.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.sshd import free_port

SETUP_ACTIONS = 4
"""Requests moto lets through unauthenticated: create_user, create_access_key,
put_user_policy, create_bucket (in that order, see :meth:`MotoS3.start`)."""
REGION = "us-east-1"


def moto_missing() -> str | None:
    """Why the S3 store cannot start here, or None."""
    found = subprocess.run(
        [sys.executable, "-c", "import moto.server, boto3"], capture_output=True
    ).returncode
    return None if found == 0 else "moto is not installed (pip install -e '.[test]': scripts/venv)"


@dataclass
class MotoS3:
    """One ``python -m moto.server`` with one user allowed on one bucket."""

    root: Path
    bucket: str = "backups"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    key_id: str = ""
    secret: str = ""

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """restic's location of ``path`` in the bucket (``{host}`` may be in it)."""
        return f"s3:{self.endpoint}/{self.bucket}/{path}"

    def start(self) -> MotoS3:
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = self.root / "moto.log"
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_ACTIONS)}
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None:
                    raise AssertionError(f"moto exited: {self.log.read_text()[-2000:]}") from None
                if time.monotonic() > deadline:
                    raise AssertionError("moto did not listen within 30 s") from None
                time.sleep(0.1)
        self._set_up()
        return self

    def _set_up(self) -> None:
        """The user, its key, a policy allowing it S3 on the bucket, and the bucket: the
        last unauthenticated requests (boto3 comes with moto)."""
        import boto3

        anyone = {
            "endpoint_url": self.endpoint,
            "region_name": REGION,
            "aws_access_key_id": "setup",
            "aws_secret_access_key": "setup",
        }
        iam = boto3.client("iam", **anyone)
        iam.create_user(UserName="pullback")
        key = iam.create_access_key(UserName="pullback")["AccessKey"]
        self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]
        resources = [f"arn:aws:s3:::{self.bucket}", f"arn:aws:s3:::{self.bucket}/*"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": resources}],
        }
        iam.put_user_policy(
            UserName="pullback", PolicyName="backups", PolicyDocument=json.dumps(policy)
        )
        boto3.client("s3", **anyone).create_bucket(Bucket=self.bucket)

    def objects(self, prefix: str) -> list[str]:
        """The keys below ``prefix`` in the bucket, as the store lists them (signed with
        the user's key: the setup's free requests are spent)."""
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
        )
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
