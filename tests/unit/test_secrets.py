"""One rule for every file holding a secret: only its owner may read it."""

from __future__ import annotations

import os

import pytest

from pullback.common import secrets
from pullback.common.secrets import SecretFileError, read_secret_file


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "db.pass"
    path.write_text("s3cret-value\nsecond line is ignored\n")
    path.chmod(0o600)
    return path


def test_the_first_line_is_the_secret_and_it_is_masked_from_then_on(secret):
    assert read_secret_file(secret) == "s3cret-value"
    assert secrets.mask("pw=s3cret-value") == f"pw={secrets.MASK}"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o610, 0o601])
def test_a_file_its_group_or_others_may_touch_is_refused(secret, mode):
    secret.chmod(mode)
    with pytest.raises(
        SecretFileError, match=rf"readable by others \(mode 0{mode:o}\); run: chmod 600"
    ):
        read_secret_file(secret, "SMTP password file")


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_modes_are_fine(secret, mode):
    secret.chmod(mode)
    assert read_secret_file(secret) == "s3cret-value"


def test_missing_empty_and_directory_are_said_in_words(tmp_path):
    with pytest.raises(SecretFileError, match=r"token file .* does not exist"):
        read_secret_file(tmp_path / "nope", "token file")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    with pytest.raises(SecretFileError, match="is empty"):
        read_secret_file(empty)
    folder = tmp_path / "folder"
    folder.mkdir(mode=0o700)
    with pytest.raises(SecretFileError, match="is not a regular file"):
        read_secret_file(folder)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)  # would block the reader for ever
    with pytest.raises(SecretFileError, match="is not a regular file"):
        read_secret_file(fifo)


def test_a_password_in_a_url_is_masked_whatever_its_user_or_password_holds():
    from pullback.common.secrets import mask_url_password, url_password

    url = "rest:http://backup@corp:S3cret/Pw@1@store:8000/web1/"
    assert mask_url_password(url) == "rest:http://backup@corp:***@store:8000/web1/"
    assert url_password(url) == "S3cret/Pw@1"
    assert mask_url_password("x\nrest:http://u:pw@h/") == "x\nrest:http://u:***@h/"
    assert url_password("rest:http://store:8000/web1/") is None


def test_check_names_every_secret_file_that_others_may_read(tmp_path):
    from pullback.client.check import check
    from pullback.client.config import load_client_config

    token, db_pass = tmp_path / "ntfy.token", tmp_path / "db.pass"
    for path in (token, db_pass):
        path.write_text("s3cret-value\n")
        path.chmod(0o640)
    services = tmp_path / "services"
    (services / "shop").mkdir(parents=True)
    service = services / "shop" / "service.yaml"
    service.write_text(
        f"service: {{name: shop}}\npostgresql: {{database: shop, password_file: {db_pass}}}\n"
    )
    config_file = tmp_path / "client.yaml"
    config_file.write_text(
        f"service_dirs: [{services}]\narchive_dir: {tmp_path / 'a'}\nwork_dir: {tmp_path / 'w'}\n"
        f"lock_dir: {tmp_path / 'l'}\n"
        f"notify: {{ntfy: {{url: 'https://ntfy.example/t', token_file: {token}}}}}\n"
    )
    problems = check(load_client_config(config_file)).problems
    assert (
        f"{config_file}: notify.ntfy.token_file: the token file {token} is readable by others "
        f"(mode 0640); run: chmod 600 {token}" in problems
    )
    assert any(
        p.startswith(f"{service}:2: postgresql.password_file: the password file {db_pass}")
        for p in problems
    ), problems


def test_a_secret_number_is_masked_where_it_stands_whole():
    """A 4-digit PIN under a command's environment (helper-132: numbers under 6 digits
    were not secrets): masked as a whole number, the other numbers of a line kept."""
    secrets.register("4711")
    try:
        assert secrets.mask("pin=4711 port 4711, 47110 bytes, 14711") == (
            f"pin={secrets.MASK} port {secrets.MASK}, 47110 bytes, 14711"
        )
        assert secrets.mask("no digits here") == "no digits here"
    finally:
        secrets.forget_all()


def test_a_number_is_masked_before_the_log_escapes_what_stands_beside_it():
    """helper-137: escaped first, a NUL before a secret number became ``\\x00``, whose
    last digit made the number not whole, and it was logged in clear."""
    import logging

    from pullback.common.log import MaskingFormatter

    secrets.register("83629174", "0.5")
    try:
        record = logging.LogRecord("t", logging.INFO, "", 0, "%s", ("--pin\x0083629174",), None)
        line = MaskingFormatter(journal=False, bare=True).format(record)
        assert "83629174" not in line and secrets.MASK in line
        assert secrets.mask("ratio 0.5 of 10.5 MB") == f"ratio {secrets.MASK} of 10.5 MB"
    finally:
        secrets.forget_all()
