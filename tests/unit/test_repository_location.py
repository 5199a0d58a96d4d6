"""Where a host's repository is for each role, shown without its password."""

from __future__ import annotations

import dataclasses
import os

import pytest

from pullback.common import secrets
from pullback.common.config import load_validated, secret_file_problems
from pullback.common.errors import ConfigError
from pullback.common.runner import is_stack_frame
from pullback.common.schema import load_schema
from pullback.common.secrets import url_password as password_of
from pullback.server.backends import Role, make_backend
from pullback.server.backends.errors import BackendError
from pullback.server.backends.location import locate, masked
from pullback.server.config import load_server_config
from tests.helpers.files import secret_file as secret

CONFIG = """\
backend:
  repository_root: /srv/repos
  password_file: {pw}
hosts:
  - name: web1
  - name: db1
    repository: rest:http://store:8000/db1/
    maintenance_repository: rest:http://store:8001/db1/
  - name: app1
    repository_file: {repo}
    maintenance_repository_file: {maint}
    password_file: {own}
"""


@pytest.fixture
def config(tmp_path):
    files = {
        "pw": secret(tmp_path / "pw", "shared"),
        "repo": secret(tmp_path / "repo", "rest:http://puller:Pull-Pw-81@store:8000/app1/"),
        "maint": secret(tmp_path / "maint", "rest:https://boss:Boss%2FPw@store:8001/app1/"),
        "own": secret(tmp_path / "own", "app1-only"),
    }
    path = tmp_path / "server.yaml"
    path.write_text(CONFIG.format(**files))
    return load_server_config(path)


def test_each_role_finds_its_own_endpoint_and_falls_back_to_the_pull_one(config):
    backend = config.backend
    web1, db1, app1 = config.hosts
    assert locate(backend, web1, Role.PULL).value == "/srv/repos/web1"
    assert locate(backend, web1, Role.MAINTAIN).value == "/srv/repos/web1"
    assert locate(backend, db1, Role.PULL).value == "rest:http://store:8000/db1/"
    assert locate(backend, db1, Role.MAINTAIN).value == "rest:http://store:8001/db1/"
    pull = locate(backend, app1, Role.PULL)
    assert (pull.value, pull.shown) == (None, "rest:http://puller:***@store:8000/app1/")
    assert pull.file == app1.repository_file
    assert locate(backend, app1, Role.MAINTAIN).shown == "rest:https://boss:***@store:8001/app1/"


def test_templates_place_every_host_unless_it_has_its_own(config):
    backend = dataclasses.replace(
        config.backend,
        repository_url="rest:http://store:8000/{host}/",
        maintenance_repository_url="rest:http://store:8001/{host}/",
    )
    web1, db1, _ = config.hosts
    assert locate(backend, web1, Role.PULL).value == "rest:http://store:8000/web1/"
    assert locate(backend, web1, Role.MAINTAIN).value == "rest:http://store:8001/web1/"
    assert locate(backend, db1, Role.MAINTAIN).value == "rest:http://store:8001/db1/"


def test_the_tool_gets_the_location_by_file_and_the_host_s_own_password(config, tmp_path):
    app1 = config.hosts[2]
    env = make_backend(config.backend, app1, tmp_path, None, role=Role.PULL).env()
    assert env["RESTIC_REPOSITORY_FILE"] == str(app1.repository_file)
    assert "RESTIC_REPOSITORY" not in env
    assert env["RESTIC_PASSWORD_FILE"] == str(app1.password_file)
    assert "Pull-Pw-81" not in repr(env)
    # the password is a secret from then on: masked wherever it would be printed
    assert "Pull-Pw-81" not in secrets.mask("restic said http://puller:Pull-Pw-81@store")
    maint = make_backend(config.backend, app1, tmp_path, None, role=Role.MAINTAIN)
    assert maint.env()["RESTIC_REPOSITORY_FILE"] == str(app1.maintenance_repository_file)
    assert "Boss/Pw" not in secrets.mask("Boss/Pw"), "the decoded form is masked too"


def test_an_exposed_location_file_is_refused_in_words(config, tmp_path):
    app1 = config.hosts[2]
    os.chmod(app1.repository_file, 0o644)
    backend = make_backend(config.backend, app1, tmp_path, None)
    with pytest.raises(BackendError, match=r"readable by others .* chmod 600"):
        backend.env()
    assert str(app1.repository_file) in backend.repository()


@pytest.mark.parametrize(
    ("location", "shown", "password"),
    [
        ("rest:http://u:p4ss@h:8000/x/", "rest:http://u:***@h:8000/x/", "p4ss"),
        # written raw, not percent-encoded: restic cannot parse it, and prints it back
        ("rest:http://u:Ab/Cd+Ef=S9@h:1/x/", "rest:http://u:***@h:1/x/", "Ab/Cd+Ef=S9"),
        ("rest:http://u:p@ss-A1@h:1/x/", "rest:http://u:***@h:1/x/", "p@ss-A1"),
        ("s3:https://s3.example/bucket/x", "s3:https://s3.example/bucket/x", None),
        ("sftp:user@host:/srv/x", "sftp:user@host:/srv/x", None),
        ("ssh://borg@host:22/./x", "ssh://borg@host:22/./x", None),
        ("/var/lib/pullback/x", "/var/lib/pullback/x", None),
        # no scheme at all: restic prints it back whole ("unsupported protocol scheme")
        ("rest:puller:LEAKa1@store:8000/web1/", "rest:puller:***@store:8000/web1/", "LEAKa1"),
    ],
)
def test_a_password_in_a_url_is_masked(location, shown, password):
    assert masked(location) == shown
    assert password_of(location) == password


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("    repository: rest:http://u:pw@store/x/", "without a password"),
        ("    repository: rest:http://u:Sec/r3t@store/x/", "without a password"),
        ("    maintenance_repository: rest:http://u:pw@s/x/", "without a password"),
        ("    repository: rest:http://store/{host}/", "without {host}"),
        ("    repository: /srv/r\n    repository_file: /etc/pullback/r", "not both"),
    ],
)
def test_a_password_written_into_the_configuration_is_refused(tmp_path, key, says):
    path = tmp_path / "server.yaml"
    path.write_text(f"hosts:\n  - name: web1\n{key}\n")
    with pytest.raises(ConfigError) as info:
        load_server_config(path)
    assert info.value.exit_code == 2
    (problem,) = [str(p) for p in info.value.problems]
    name = "repository_file" if says == "not both" else key.split(":")[0].strip()
    line = 4 if says == "not both" else 3
    assert problem.startswith(f"{path}:{line}: hosts[0].{name}: ") and says in problem, problem


def test_borg_locations_are_paths_or_ssh_urls(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text(
        "backend: {type: borg, maintenance_repository_url: 'rest:http://s/{host}/'}\nhosts: []\n"
    )
    with pytest.raises(ConfigError, match=r"backend.maintenance_repository_url: borg"):
        load_server_config(path)


def test_go_stack_frames_are_not_words():
    assert is_stack_frame("github.com/restic/restic/internal/backend.(*RetryBackend).Remove")
    assert is_stack_frame("\tgithub.com/restic/restic/internal/backend/rest/rest.go:399")
    assert is_stack_frame("runtime.goexit")
    assert not is_stack_frame("blob not removed, server response: 403 Forbidden (403)")
    assert not is_stack_frame("Fatal: wrong password or no key found")
    assert not is_stack_frame("done")


def test_only_a_location_file_s_password_is_a_secret(tmp_path):
    """A location file keeps a URL's password out of server.yaml: that password is
    masked, the rest of the line is not (an outside walk saw restic's "created restic
    repository ... at /mnt/offsite/web1" printed as "at ***"), also after `check` read
    the file to judge its mode."""
    files = {
        "pw": secret(tmp_path / "pw", "shared"),
        "repo": secret(tmp_path / "repo", "/mnt/offsite-Q7/web1-local"),
        "maint": secret(tmp_path / "maint", "rest:http://boss:Only-Pw-93@store:8001/web1/"),
        "own": secret(tmp_path / "own", "app1-only"),
    }
    path = tmp_path / "server.yaml"
    path.write_text(CONFIG.format(**files))
    config = load_server_config(path)
    schema = load_schema("pullback.common", "server")
    data = load_validated(path, schema, allow_empty=False).data
    assert secret_file_problems(path, schema, data) == []
    app1 = config.hosts[2]
    pull = locate(config.backend, app1, Role.PULL)
    maint = locate(config.backend, app1, Role.MAINTAIN)
    assert pull.shown == "/mnt/offsite-Q7/web1-local"
    assert maint.shown == "rest:http://boss:***@store:8001/web1/"
    said = "created restic repository 5d2 at /mnt/offsite-Q7/web1-local; auth Only-Pw-93"
    assert secrets.mask(said) == (
        f"created restic repository 5d2 at /mnt/offsite-Q7/web1-local; auth {secrets.MASK}"
    )


@pytest.mark.parametrize(
    ("raw", "piece"),
    [("Zq9SECRETx/Kp+w==", "Zq9SECRETx"), ("MAIL#LEAK77", "MAIL"), ("Abc?LEAKe5", "Abc")],
)
def test_what_restic_prints_of_a_raw_password_is_masked(tmp_path, raw, piece):
    """A password not percent-encoded (the mistake scaling.md warns of): restic's Go URL
    parser cuts it at / ? # and quotes a piece (``invalid port ":Zq9SECRETx" after
    host``); an outside walk found the piece in the log, the mail, status and
    status.json. Real restic, whose parse fails before any network."""
    import subprocess

    from pullback.common import secrets
    from pullback.server.backends.location import _from_file

    location = tmp_path / "web1.repository"
    location.write_text(f"rest:http://puller:{raw}@store.example:8000/web1/\n")
    location.chmod(0o600)
    with pytest.raises(BackendError, match="write it percent-encoded") as refused:
        _from_file(location)  # refused before restic runs; masked should it run anyway
    assert piece not in str(refused.value)
    said = subprocess.run(
        ["restic", "-r", location.read_text().strip(), "snapshots", "--no-lock"],
        capture_output=True,
        text=True,
        env={"RESTIC_PASSWORD": "x", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=60,
    ).stderr
    assert f'":{piece}"' in said, said  # what restic prints of it
    shown = secrets.mask(said)
    assert piece not in shown and raw not in shown, shown


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ("Zq@9/Kx:Wm#7?Lp%Ab", "@ / # ?"),
        ("pass%zzword", "%"),
        ("partofthesecret42/Kx", "/"),
    ],
)
def test_a_raw_password_is_refused_before_restic_can_send_a_piece_of_it(tmp_path, raw, named):
    """An outside attack: a raw ``@`` or ``/`` made restic take a piece of the password
    for the host name and look it up (a DNS query to the network); shown pieces of two
    characters were not masked."""
    from pullback.server.backends.location import _from_file

    location = tmp_path / "web1.repository"
    location.write_text(f"rest:https://puller3:{raw}@127.0.0.1:18451/web1/\n")
    location.chmod(0o600)
    with pytest.raises(BackendError) as refused:
        _from_file(location)
    said = str(refused.value)
    assert f"holds {named} as it is" in said and "nothing was run" in said
    assert raw not in said and "Kx" not in said and "Wm" not in said
    encoded = "rest:https://puller3:Zq%409%2FKx%3AWm%237%3FLp%25Ab@127.0.0.1:18451/web1/"
    assert secrets.unencoded_in_password(encoded) == []


def test_a_comment_as_the_first_line_of_a_location_file_is_refused_naming_it(config):
    """An outside walk: ``restic failed on # store: ... invalid backend``."""
    app1 = config.hosts[2]
    secret(app1.repository_file, "# the store\nrest:http://puller:Pull-Pw-81@store:8000/app1/")
    with pytest.raises(BackendError) as info:
        locate(config.backend, app1, Role.PULL)
    assert str(info.value) == (
        f"the first line of {app1.repository_file} is a comment: the location is read from "
        "the first line alone; put the repository URL there"
    )


@pytest.mark.parametrize(
    ("fatal", "hint"),
    [
        (
            "unable to open config file: client.Head: unexpected HTTP response (401): "
            "401 Unauthorized",
            "; check the user and password in {file}",
        ),
        (
            "parsing repository location failed: url.Parse: invalid port",
            "; the location is the first line of {file}: is it right?",
        ),
        ("unable to open config file: connection refused", ""),
    ],
)
def test_restic_s_failure_on_a_location_file_says_what_to_check_there(config, fatal, hint):
    from pullback.common.errors import CommandError
    from tests.helpers.fakes import ScriptedRunner

    app1 = config.hosts[2]
    runner = ScriptedRunner(CommandError("restic", 1, [f"Fatal: {fatal}"]))
    backend = make_backend(config.backend, app1, config.state_dir, runner, 1)
    with pytest.raises(BackendError) as info:
        backend.run(["snapshots"])
    assert str(info.value).endswith(f"{fatal}{hint.format(file=app1.repository_file)}")


def test_restic_init_s_line_names_the_location_it_was_given_by_file(config, caplog):
    """restic 0.14 prints "created restic repository ID at " and nothing after "at"
    when the location came by RESTIC_REPOSITORY_FILE."""
    from tests.helpers.fakes import ScriptedRunner

    app1 = config.hosts[2]
    said = b"created restic repository 7b7ca24ba9 at \n\nPlease note that knowledge...\n"
    backend = make_backend(config.backend, app1, config.state_dir, ScriptedRunner(said), 1)
    with caplog.at_level("INFO"):
        backend.init()
    assert (
        "restic: created restic repository 7b7ca24ba9 at rest:http://puller:***@store:8000/app1/"
        in caplog.text
    ), caplog.text
    assert "Pull-Pw-81" not in caplog.text


@pytest.mark.parametrize(
    ("location", "refused"),
    [
        ("rest:https://puller:Pa55\\SECRETx@store/", ["\\"]),  # restic quoted it, doubled
        ('rest:https://puller:Pa55"SECRETx@store/', ['"']),
        ("rest:https://puller:Pa 55@store/", [" "]),
        ("rest:https://store:8000/repos/web1@prod/", []),  # an @ in the path, no password
        ("rest:http://[::1]:8000/web1@2024/", []),
        ("sftp://backup@host:2222/srv/restic@web1", []),
        ("s3:https://minio:9000/bucket@2024", []),
        ("rest:https://puller:Zq%409%2FKx%3AWm%237%3FLp%25Ab@[::1]:8000/web1/", []),
        ("sftp:user@host:/p@x", []),
        # ambiguous (a password, and an @ in the path): refused, the path's @ as %40
        ("rest:https://puller:secret@store:8000/repos/web1@prod/", ["@", "/"]),
    ],
)
def test_which_location_urls_hold_a_raw_password(location, refused):
    """An outside attack on the first version: a backslash or a quote passed (restic
    printed the URL quoted, past the mask), and valid URLs with an ``@`` in the path
    were refused."""
    assert secrets.unencoded_in_password(location) == refused


@pytest.mark.parametrize(
    ("line", "refused"),
    [
        ("rest:https//puller:Pa55SECRETx@store/", True),  # a colon missing: no URL
        ("sftp:user@host:/srv/restic@x", False),
        ("sftp://backup@host:2222/srv/restic", False),
        ("/srv/restic/web1", False),
        ("s3:https://minio:9000/bucket", False),
        ("rest:https://puller:Pa55SECRETx@store/", False),
    ],
)
def test_a_password_outside_any_url_is_refused_unprinted(tmp_path, line, refused):
    """An outside attack: ``rest:https//puller:Pa55SECRETx@store/`` (a typo) was no URL
    to the password reader, so nothing was registered to mask, and restic printed it."""
    from pullback.server.backends.location import _from_file

    location = tmp_path / "web1.repository"
    location.write_text(line + "\n")
    location.chmod(0o600)
    if not refused:
        _from_file(location)
        return
    with pytest.raises(BackendError, match="where no URL has it") as said:
        _from_file(location)
    assert "Pa55SECRETx" not in str(said.value)
